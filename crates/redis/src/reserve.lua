-- Reservations of one sale, a batch at a time, each decided and recorded atomically in the sale's
-- own keys (one hash tag, so one Redis Cluster shard): the Idempotency-Key, the window, the
-- item's stock and the buyer's limit are checked, the stock taken and the reservation appended to
-- the sale's stream. The requests are decided in their order, each seeing what the ones before
-- it did: a batch answers exactly as the same requests sent one at a time would be answered.
-- What several requests share is read once (the sale's window, every item's stock and every
-- buyer's holding the batch names) and written once at the end, which is most of what a batch
-- saves.
--
-- KEYS: 1 meta (hash: starts_at, ends_at, per_user_limit, ttl; microseconds)
--       2 stock (hash: item -> remaining)   3 held (hash: buyer -> units)
--       (both also hold "\31table", which no item or buyer is, see load.lua)
--       4 keys (hash: buyer \31 key -> fingerprint \31 answer)   5 log (stream)
--       6 key counts (hash: buyer -> keys remembered for them in this sale)
--       (A reservation's state is recorded when it is settled, by settle.lua, not here.)
-- ARGV: 1 how many keys one buyer may have remembered in this sale (0: no cap); one more
--         answers {"too_many_keys"}
--       then 8 per request: now (us), item, buyer, quantity, idempotency key ("" for none),
--         fingerprint of the request, reservation id, the name the caller gave the buyer (""
--         for a user; the contest API's), logged as "ref"
-- Answers one reply per request, in their order: {"reserved", id, expires_at, log entry id} or
-- {"refused", reason}, or {"key_reused"} or {"too_many_keys"}; an answer given for a key is
-- given again for it ("replayed" first, without the entry id). A sale lost and not yet rebuilt
-- answers {"refused", "rebuilding", rebuild_at}. The replies come as one string, each reply's
-- fields joined by the unit separator (\31) and the replies by the record separator (\30):
-- one bulk string is read far faster than an array of arrays.
--
-- Writes come after every decision, stock and holdings first: should Redis fail a write half
-- way, units may be missing from sale, never sold twice; a reservation is logged before the
-- answer remembered for its key.

local FIELDS = 8
local max_keys = tonumber(ARGV[1])
local count = (#ARGV - 1) / FIELDS

local meta = redis.call("HMGET", KEYS[1], "starts_at", "ends_at", "per_user_limit", "ttl",
  "rebuild_at")
local starts_at, ends_at = tonumber(meta[1]), tonumber(meta[2])
local limit, ttl = tonumber(meta[3]), tonumber(meta[4])

-- Read once (every item and buyer the batch names, one HMGET each), then kept here and written
-- back at the end.
local stock, stock_changed = {}, {}  -- item -> remaining (false: no such item)
local held, held_changed = {}, {}    -- buyer -> units
local key_counts = {}                -- buyer -> keys remembered (read only under a cap)
local remembered = {}                -- buyer \31 key -> what this batch remembers for it

if starts_at then
  local items, buyers = {}, {}
  for r = 1, count do
    local at = 1 + (r - 1) * FIELDS
    local item, buyer = ARGV[at + 2], ARGV[at + 3]
    if stock[item] == nil then
      stock[item] = false
      table.insert(items, item)
    end
    if held[buyer] == nil then
      held[buyer] = 0
      table.insert(buyers, buyer)
    end
  end
  local remaining = redis.call("HMGET", KEYS[2], unpack(items))
  for i, item in ipairs(items) do
    stock[item] = remaining[i] and tonumber(remaining[i]) or false
  end
  local holdings = redis.call("HMGET", KEYS[3], unpack(buyers))
  for i, buyer in ipairs(buyers) do
    held[buyer] = tonumber(holdings[i] or "0")
  end
end

local replies = {}
local logged = {}  -- request index -> the fields of its reservation's log entry
local keyed = {}   -- {request index, field, value, buyer}, in order

-- What a request was answered, remembered for its key, except that a sale which does not exist
-- is not (made-up sale ids must not fill the table), nor an ended one (the answer cannot
-- change, and an ended sale's keys are on their way out).
local function answer(r, buyer, key, field, fingerprint, reply)
  if key ~= "" and reply[2] ~= "no_sale" and reply[2] ~= "ended" then
    local value = fingerprint .. "\31" .. cjson.encode(reply)
    remembered[field] = value
    if key_counts[buyer] then
      key_counts[buyer] = key_counts[buyer] + 1
    end
    table.insert(keyed, {r, field, value, buyer})
  end
  return reply
end

-- Decides request `r`, whose fields start after ARGV[at].
local function decide(r, at)
  local now_text, item, buyer = ARGV[at + 1], ARGV[at + 2], ARGV[at + 3]
  local now, quantity = tonumber(now_text), tonumber(ARGV[at + 4])
  local key, fingerprint = ARGV[at + 5], ARGV[at + 6]
  local field
  if key ~= "" then
    field = buyer .. "\31" .. key
    local seen = remembered[field] or redis.call("HGET", KEYS[4], field)
    if seen then
      local sep = string.find(seen, "\31", 1, true)
      if string.sub(seen, 1, sep - 1) ~= fingerprint then
        return {"key_reused"}
      end
      local replay = cjson.decode(string.sub(seen, sep + 1))
      table.insert(replay, 1, "replayed")
      return replay
    end
    if max_keys > 0 then
      if not key_counts[buyer] then
        key_counts[buyer] = tonumber(redis.call("HGET", KEYS[6], buyer) or "0")
      end
      if key_counts[buyer] >= max_keys then
        return {"too_many_keys"}
      end
    end
  end
  if not starts_at then
    if meta[5] then
      -- Lost and waiting to be rebuilt from the records (see lost.lua): never answered
      -- from what is not there, and never remembered for the key.
      return {"refused", "rebuilding", meta[5]}
    end
    return answer(r, buyer, key, field, fingerprint, {"refused", "no_sale"})
  end
  if now < starts_at then
    return answer(r, buyer, key, field, fingerprint, {"refused", "not_started"})
  end
  if now >= ends_at then
    return answer(r, buyer, key, field, fingerprint, {"refused", "ended"})
  end
  local remaining = stock[item]
  if not remaining then
    return answer(r, buyer, key, field, fingerprint, {"refused", "no_item"})
  end
  if remaining < quantity then
    return answer(r, buyer, key, field, fingerprint, {"refused", "sold_out"})
  end
  local holding = held[buyer]
  if holding + quantity > limit then
    return answer(r, buyer, key, field, fingerprint, {"refused", "limit_reached"})
  end
  if not stock_changed[item] then
    stock_changed[item] = true
    table.insert(stock_changed, item)
  end
  stock[item] = remaining - quantity
  if not held_changed[buyer] then
    held_changed[buyer] = true
    table.insert(held_changed, buyer)
  end
  held[buyer] = holding + quantity
  -- Microseconds pass 2^31: written with %.0f, never in Lua's exponent notation.
  local expires_at = string.format("%.0f", now + ttl)
  local id = ARGV[at + 7]
  local fields = {"id", id, "item", item, "buyer", buyer, "quantity", ARGV[at + 4],
    "at", now_text, "expires_at", expires_at}
  if ARGV[at + 8] ~= "" then
    -- A buyer named by the caller (the contest API), not a user: stored without an order.
    table.insert(fields, "ref")
    table.insert(fields, ARGV[at + 8])
  end
  logged[r] = fields
  return answer(r, buyer, key, field, fingerprint, {"reserved", id, expires_at})
end

for r = 1, count do
  replies[r] = decide(r, 1 + (r - 1) * FIELDS)
end

-- The fields of `hash` named in `changed`, set to their values in `values`, in one HSET.
local function write_back(hash, changed, values)
  if #changed == 0 then
    return
  end
  local args = {}
  for _, field in ipairs(changed) do
    table.insert(args, field)
    table.insert(args, string.format("%.0f", values[field]))
  end
  redis.call("HSET", hash, unpack(args))
end

write_back(KEYS[2], stock_changed, stock)
write_back(KEYS[3], held_changed, held)
-- The log entry's id follows the answer remembered for the key (a replay has no entry of its
-- own): whoever stores the reservation may drop the entry from the log.
local next_key = 1
for r = 1, count do
  if logged[r] then
    table.insert(replies[r], redis.call("XADD", KEYS[5], "*", unpack(logged[r])))
  end
  while keyed[next_key] and keyed[next_key][1] == r do
    local k = keyed[next_key]
    redis.call("HSET", KEYS[4], k[2], k[3])
    redis.call("HINCRBY", KEYS[6], k[4], 1)
    next_key = next_key + 1
  end
  replies[r] = table.concat(replies[r], "\31")
end
return table.concat(replies, "\30")

-- One reservation, decided and recorded atomically in the sale's own keys (one hash tag, so one
-- Redis Cluster shard): the Idempotency-Key, the window, the item's stock and the buyer's
-- limit are checked, the stock taken and the reservation appended to the sale's stream.
--
-- KEYS: 1 meta (hash: starts_at, ends_at, per_user_limit, ttl; microseconds)
--       2 stock (hash: item -> remaining)   3 held (hash: buyer -> units)
--       4 keys (hash: buyer \31 key -> fingerprint \31 answer)   5 log (stream)
--       6 key counts (hash: buyer -> keys remembered for them in this sale)
--       (A reservation's state is recorded when it is settled, by settle.lua, not here.)
-- ARGV: 1 now (us)  2 item  3 buyer  4 quantity  5 idempotency key ("" for none)
--       6 fingerprint of the request  7 reservation id
--       8 the name the caller gave the buyer ("" for a user; the contest API's), logged as "ref"
--       9 how many keys one buyer may have remembered in this sale (0: no cap); one more
--         answers {"too_many_keys"}
-- Answers {"reserved", id, expires_at, log entry id} or {"refused", reason}, or {"key_reused"};
-- an answer given for a key is given again for it ("replayed" first, without the entry id). A
-- sale lost and not yet rebuilt answers {"refused", "rebuilding", rebuild_at}.

local now = tonumber(ARGV[1])
local item, buyer, quantity = ARGV[2], ARGV[3], tonumber(ARGV[4])
local key, fingerprint = ARGV[5], ARGV[6]
local field = buyer .. "\31" .. key

local max_keys = tonumber(ARGV[9])
if key ~= "" then
  local seen = redis.call("HGET", KEYS[4], field)
  if seen then
    local sep = string.find(seen, "\31", 1, true)
    if string.sub(seen, 1, sep - 1) ~= fingerprint then
      return {"key_reused"}
    end
    local answer = cjson.decode(string.sub(seen, sep + 1))
    table.insert(answer, 1, "replayed")
    return answer
  end
  if max_keys > 0 and tonumber(redis.call("HGET", KEYS[6], buyer) or "0") >= max_keys then
    return {"too_many_keys"}
  end
end

-- Remembered for the key, except that a sale which does not exist is not (made-up sale ids
-- must not fill the table), nor an ended one (the answer cannot change, and an ended sale's
-- keys are on their way out).
local function answer(reply)
  if key ~= "" and reply[2] ~= "no_sale" and reply[2] ~= "ended" then
    redis.call("HSET", KEYS[4], field, fingerprint .. "\31" .. cjson.encode(reply))
    redis.call("HINCRBY", KEYS[6], buyer, 1)
  end
  return reply
end

local meta = redis.call("HMGET", KEYS[1], "starts_at", "ends_at", "per_user_limit", "ttl",
  "rebuild_at")
if not meta[1] then
  if meta[5] then
    -- Lost and waiting to be rebuilt from the records (see lost.lua): never answered from
    -- what is not there, and never remembered for the key.
    return {"refused", "rebuilding", meta[5]}
  end
  return answer({"refused", "no_sale"})
end
if now < tonumber(meta[1]) then
  return answer({"refused", "not_started"})
end
if now >= tonumber(meta[2]) then
  return answer({"refused", "ended"})
end
local remaining = redis.call("HGET", KEYS[2], item)
if not remaining then
  return answer({"refused", "no_item"})
end
if tonumber(remaining) < quantity then
  return answer({"refused", "sold_out"})
end
local held = tonumber(redis.call("HGET", KEYS[3], buyer) or "0")
if held + quantity > tonumber(meta[3]) then
  return answer({"refused", "limit_reached"})
end
redis.call("HINCRBY", KEYS[2], item, -quantity)
redis.call("HINCRBY", KEYS[3], buyer, quantity)
-- Microseconds pass 2^31: written with %.0f, never in Lua's exponent notation.
local expires_at = string.format("%.0f", now + tonumber(meta[4]))
local fields = {"id", ARGV[7], "item", item, "buyer", buyer, "quantity", ARGV[4],
  "at", ARGV[1], "expires_at", expires_at}
if ARGV[8] ~= "" then
  -- A buyer named by the caller (the contest API), not a user: stored without an order.
  table.insert(fields, "ref")
  table.insert(fields, ARGV[8])
end
local entry = redis.call("XADD", KEYS[5], "*", unpack(fields))
-- The log entry's id follows the answer remembered for the key (a replay has no entry of its
-- own): whoever stores the reservation may drop the entry from the log.
local reply = answer({"reserved", ARGV[7], expires_at})
table.insert(reply, entry)
return reply

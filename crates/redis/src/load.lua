-- Loads a sale into Redis only when Redis holds nothing of it: at its creation, when a request
-- finds it missing (made by another instance, or lost with Redis's data), and by reconciliation.
-- A sale already there is left exactly as it is, so two instances loading it at once, or a load
-- racing reservations, can never put back stock that was sold. A sale marked lost (lost.lua) is
-- loaded only once its rebuild time has come.
--
-- KEYS: 1 meta  2 stock  3 held (see reserve.lua)
-- ARGV: 1 starts_at (us)  2 ends_at (us)  3 per_user_limit  4 ttl (us)
--       5 now (us)  6 n items, then n pairs (item, remaining)
--       then m pairs (buyer, units held) to the end
-- Answers 1 when it loaded the sale, 0 when the sale was there already.

if redis.call("HEXISTS", KEYS[1], "starts_at") == 1 then
  return 0
end
local rebuild_at = redis.call("HGET", KEYS[1], "rebuild_at")
if rebuild_at and tonumber(ARGV[5]) < tonumber(rebuild_at) then
  return 0
end
redis.call("DEL", KEYS[2], KEYS[3])
-- A field no item or buyer can be, with a value too long for a small hash's compact encoding:
-- the stock and the holdings stay hash tables, whose fields reserve.lua reads without scanning
-- them all (the same as `TABLE_FIELD` in lib.rs).
local table_value = string.rep("-", 1024)
redis.call("HSET", KEYS[2], "\31table", table_value)
redis.call("HSET", KEYS[3], "\31table", table_value)
local n = tonumber(ARGV[6])
local at = 7
for _ = 1, n do
  redis.call("HSET", KEYS[2], ARGV[at], ARGV[at + 1])
  at = at + 2
end
while at < #ARGV do
  redis.call("HSET", KEYS[3], ARGV[at], ARGV[at + 1])
  at = at + 2
end
-- The meta last: a sale is there for reserve.lua once its stock and holdings are.
redis.call("HSET", KEYS[1], "starts_at", ARGV[1], "ends_at", ARGV[2],
  "per_user_limit", ARGV[3], "ttl", ARGV[4])
redis.call("HDEL", KEYS[1], "rebuild_at")
return 1

-- Moves one reservation out of `reserved`, once: to `expired` or `cancelled` (its units go back
-- to the item's stock and leave what the buyer holds) or to `purchased` (they stay sold). The
-- state recorded here decides, so whichever of expiry, cancellation and payment comes first
-- wins and the others change nothing.
--
-- KEYS: 1 stock  2 held  3 reservations (hash: id -> state \31 item \31 buyer \31 quantity)
-- ARGV: 1 reservation id  2 the new state ("expired", "cancelled" or "purchased")
--       3 item  4 buyer  5 quantity: the reservation as the records hold it
-- Answers {"changed"} or {"unchanged", current state}.
--
-- reserve.lua records nothing here (one call fewer on the hot path): a reservation without an
-- entry is one still reserved, made by the script or counted as held when the sale was rebuilt
-- from the records (load.lua). Its first settlement records its new state and returns its units
-- once. (An entry in state "reserved", written by an older reserve.lua, is settled the same way.)

local record = redis.call("HGET", KEYS[3], ARGV[1])
if not record then
  redis.call("HSET", KEYS[3], ARGV[1],
    ARGV[2] .. "\31" .. ARGV[3] .. "\31" .. ARGV[4] .. "\31" .. ARGV[5])
  if ARGV[2] ~= "purchased" then
    redis.call("HINCRBY", KEYS[1], ARGV[3], tonumber(ARGV[5]))
    redis.call("HINCRBY", KEYS[2], ARGV[4], -tonumber(ARGV[5]))
  end
  return {"changed"}
end
local fields = {}
for part in string.gmatch(record, "[^\31]+") do
  table.insert(fields, part)
end
local state, item, buyer, quantity = fields[1], fields[2], fields[3], tonumber(fields[4])
if state ~= "reserved" then
  return {"unchanged", state}
end
if ARGV[2] ~= "purchased" then
  redis.call("HINCRBY", KEYS[1], item, quantity)
  redis.call("HINCRBY", KEYS[2], buyer, -quantity)
end
redis.call("HSET", KEYS[3], ARGV[1],
  ARGV[2] .. "\31" .. item .. "\31" .. buyer .. "\31" .. fields[4])
return {"changed"}

-- reserve-flash: POST /promos/{id}/reserve and nothing else, so holds pile up. Each run
-- (BENCH_ROUND) has users of its own, one per connection, and each connection walks the
-- promos from its own starting point: every request is a new hold (201) of a user who
-- holds nothing on that promo yet.
package.path = os.getenv("BENCH_LUA") .. "/?.lua;" .. package.path
require("common")

local me, promos, at

function init(args)
  local round = tonumber(os.getenv("BENCH_ROUND"))
  local stride = tonumber(os.getenv("BENCH_STRIDE"))
  me = load_slot(os.getenv("BENCH_USERS"), (round - 1) * stride + slot)
  promos = {}
  for line in io.lines(os.getenv("BENCH_PROMOS")) do promos[#promos + 1] = line end
  at = (slot * 7919 + round * 104729) % #promos
  base = os.getenv("BENCH_BASE") .. "/promos/"
  hdrs = headers_for(me[1], me[2])
end

function request()
  at = at % #promos + 1
  return wrk.format("POST", base .. promos[at] .. "/reserve", hdrs, "{}")
end

function response(status, headers, body)
  count_status(status)
end

-- reserve+purchase: reserve a unit of the promo, then purchase it; repeat.
package.path = os.getenv("BENCH_LUA") .. "/?.lua;" .. package.path
require("common")

local me, phase, reservation

function init(args)
  me = load_slot(os.getenv("BENCH_USERS"), slot)
  base = os.getenv("BENCH_BASE")
  reserve_path = base .. "/promos/" .. os.getenv("BENCH_PROMO") .. "/reserve"
  hdrs = headers_for(me[1], me[2])
  phase = "reserve"
end

function request()
  if phase == "reserve" then
    return wrk.format("POST", reserve_path, hdrs, "{}")
  end
  return wrk.format("POST", base .. "/reservations/" .. reservation .. "/purchase", hdrs, "{}")
end

function response(status, headers, body)
  count_status(status)
  if phase == "reserve" then
    local id = string.match(body, '"id"%s*:%s*"([^"]+)"')
    if id and status < 300 then reservation = id; phase = "purchase" end
  else
    phase = "reserve"
  end
end

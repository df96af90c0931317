-- assign-random: POST /books/{id}/assign as a rotating set of users.
package.path = os.getenv("BENCH_LUA") .. "/?.lua;" .. package.path
require("common")

local me

function init(args)
  me = load_slot(os.getenv("BENCH_USERS"), slot)
  path = os.getenv("BENCH_BASE") .. "/books/" .. os.getenv("BENCH_BOOK") .. "/assign"
  hdrs = headers_for(me[1], me[2])
end

function request()
  return wrk.format("POST", path, hdrs, "{}")
end

function response(status, headers, body)
  count_status(status)
end

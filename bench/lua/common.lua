-- Shared by the scenarios: each wrk thread drives one connection (-t equals -c), so the
-- per-thread Lua state is the state of one client: its user, its token, its code.
local counter = 0
local threads = {}

function setup(thread)
  counter = counter + 1
  thread:set("slot", counter)
  table.insert(threads, thread)
end

function load_slot(file, slot)
  local lines = {}
  for line in io.lines(file) do lines[#lines + 1] = line end
  local line = lines[((slot - 1) % #lines) + 1]
  local fields = {}
  for field in string.gmatch(line, "%S+") do fields[#fields + 1] = field end
  return fields
end

-- A connection's share of a crowd: the request headers of each "token user_id" line of
-- <dir>/<slot>.txt.
function load_crowd(dir, slot)
  local crowd = {}
  for line in io.lines(dir .. "/" .. slot .. ".txt") do
    local token, user_id = string.match(line, "(%S+) (%S+)")
    crowd[#crowd + 1] = headers_for(token, user_id)
  end
  return crowd
end

function headers_for(token, user_id)
  return {
    ["Authorization"] = "Bearer " .. token,
    ["X-User-Id"] = user_id,
    ["Content-Type"] = "application/json",
  }
end

statuses = {}

function count_status(status)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local merged = {}
  for _, thread in ipairs(threads) do
    local s = thread:get("statuses")
    for k, v in pairs(s) do merged[k] = (merged[k] or 0) + v end
  end
  local parts = {}
  for k, v in pairs(merged) do parts[#parts + 1] = k .. "=" .. v end
  io.write("STATUSES " .. table.concat(parts, ",") .. "\n")
  io.write(string.format("LATENCY p50=%.3f p99=%.3f\n",
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end

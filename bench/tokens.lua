-- Sends each pre-minted single-use token once: thread i of n takes tokens OFFSET+i, OFFSET+i+n, …
-- Tokens come from the file named by the TOKENS environment variable, one per line; OFFSET
-- (default 0) lets a warm-up run use tokens the measured run never reaches.
local tokens = {}
for line in io.lines(os.getenv("TOKENS")) do tokens[#tokens + 1] = line end
local threads = {}
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("index", counter)
  table.insert(threads, thread)
end

function init(args)
  step = tonumber(os.getenv("THREADS") or "2")
  next_token = tonumber(os.getenv("OFFSET") or "0") + index
end

function request()
  local token = tokens[next_token]
  next_token = next_token + step
  if token == nil then token = "exhausted" end
  return wrk.format("GET", "/", { ["Authorization"] = "Bearer " .. token })
end

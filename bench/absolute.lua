-- Makes wrk speak to a forward proxy: absolute-form request target, Host of the real target.
local target = os.getenv("TARGET")
local host = target:match("^%a+://([^/]+)")
function request()
  return wrk.format("GET", target, { ["Host"] = host })
end

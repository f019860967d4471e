-- Helpers shared by the opes-milter miltertest scripts; each script loads
-- this file with dofile(lib). Globals the scripts read (miltertest -D):
--   sock    the milter socket: inet:PORT@HOST or unix:/path (required)
--   system  the OPES system URI the policy names
--   lib     path of this file (default: integration/miltertest/common.lua)
--
-- miltertest exits 1 on a Lua error() but does not print the message, so
-- fail() echoes a "FAIL: ..." line first: the Go test shows it.

if sock == nil then
  mt.echo("FAIL: no socket: run miltertest -D sock=inet:PORT@127.0.0.1 -s SCRIPT")
  error("no sock")
end

function fail(msg)
  mt.echo("FAIL: " .. msg)
  error(msg, 2)
end

-- check fails unless a miltertest call returned nil (its success value).
function check(rc, what)
  if rc ~= nil then fail(what .. ": " .. tostring(rc)) end
end

local replies = {
  [SMFIR_CONTINUE] = "continue", [SMFIR_ACCEPT] = "accept",
  [SMFIR_REJECT] = "reject", [SMFIR_TEMPFAIL] = "tempfail",
  [SMFIR_DISCARD] = "discard", [SMFIR_REPLYCODE] = "replycode",
}

function replyname(r)
  if replies[r] ~= nil then return replies[r] end
  if r == 0 then return "none" end
  return "'" .. string.char(math.floor(r)) .. "'"
end

-- expect fails unless the last reply on conn is want (an SMFIR_* number).
function expect(conn, what, want)
  local got = mt.getreply(conn)
  if got ~= want then
    fail(what .. ": reply " .. replyname(got) .. ", want " .. replyname(want))
  end
end

-- open connects and negotiates with miltertest's (libmilter's) defaults:
-- every action and protocol step offered, as an MTA does.
function open()
  local conn = mt.connect(sock, 40, 0.25) -- retry for up to 10 s
  if conn == nil then fail("mt.connect(" .. sock .. ") failed") end
  check(mt.negotiate(conn, nil, nil, nil), "negotiate")
  return conn
end

-- want_option fails unless the milter's negotiated protocol flag (an
-- SMFIP_* name) is on (on == true) or off.
function want_option(conn, name, on)
  local flag = _G[name]
  if flag == nil then fail("miltertest lacks " .. name) end
  if mt.test_option(conn, flag) ~= on then
    fail("negotiation: " .. name .. (on and " not requested" or " requested"))
  end
end

-- step sends one SMTP stage (fn is mt.conninfo, mt.helo, ...) and expects
-- want, unless the milter switched the stage off with flag: then it checks
-- that miltertest refuses to send it, as an MTA would not send it either.
function step(conn, flag, what, want, fn, ...)
  if mt.test_option(conn, flag) then
    local ok = pcall(fn, conn, ...)
    if ok then fail(what .. " was sent although the milter switched it off") end
    return false
  end
  check(fn(conn, ...), what)
  expect(conn, what, want)
  return true
end

-- header sends one header field (value with its leading space: the milter
-- negotiates SMFIP_HDR_LEADSPC) and expects continue, unless the milter
-- said it never answers a single field (SMFIP_NOHREPL): then there is no
-- reply to read.
function header(conn, name, value)
  check(mt.header(conn, name, value), "header " .. name)
  if not mt.test_option(conn, SMFIP_NOHREPL) then
    expect(conn, "header " .. name, SMFIR_CONTINUE)
  end
end

-- literal quotes s for use in a Lua pattern.
function literal(s)
  return (string.gsub(s, "%p", "%%%0"))
end

-- trace checks the trace fields inserted at end of message: OPES-System
-- and OPES-Via at index 0 (the top), values with the leading space
-- (SMFIP_HDR_LEADSPC), the system URI first with id=<id>. id is a Lua
-- pattern; trace returns the id found and the OPES-Via value.
function trace(conn, uri, id)
  local sys = mt.getheader(conn, "OPES-System", 0)
  local via = mt.getheader(conn, "OPES-Via", 0)
  if sys == nil then fail("no OPES-System field added") end
  if via == nil then fail("no OPES-Via field added") end
  -- Folded lines end in LF alone inside the milter protocol (libmilter's
  -- smfi_insheader); a CR would reach the message doubled.
  if string.find(sys .. via, "\r") then fail("a trace field value contains CR") end
  local got = string.match(sys, "^ " .. literal(uri) .. "; id=(" .. id .. ")$")
  if got == nil then
    fail("OPES-System value [" .. sys .. "], want [ " .. uri .. "; id=" .. (id == ULID and "<ULID>" or id) .. "]")
  end
  if string.match(via, "^ " .. literal(uri) .. "; id=" .. literal(got) .. ",[ \n]") == nil and
     via ~= " " .. uri .. "; id=" .. got then
    fail("OPES-Via value [" .. via .. "] does not start with [ " .. uri .. "; id=" .. got .. "]")
  end
  if not mt.eom_check(conn, MT_HDRINSERT, "OPES-System", sys, 0) then
    fail("OPES-System not inserted at index 0")
  end
  if not mt.eom_check(conn, MT_HDRINSERT, "OPES-Via", via, 0) then
    fail("OPES-Via not inserted at index 0")
  end
  if mt.eom_check(conn, MT_HDRADD, "OPES-System") or mt.eom_check(conn, MT_HDRADD, "OPES-Via") then
    fail("a trace field was appended (SMFIR_ADDHEADER) instead of inserted")
  end
  if mt.getheader(conn, "OPES-System", 1) ~= nil or mt.getheader(conn, "OPES-Via", 1) ~= nil then
    fail("a trace field was added twice")
  end
  return got, via
end

-- ULID is the pattern of a trace id the milter made itself, when the MTA
-- sent no queue id: 26 characters of Crockford's base 32.
ULID = string.rep("[0-9A-HJKMNP-TV-Z]", 26)

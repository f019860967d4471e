-- Where opes-milter puts its header fields, driven by miltertest. The Go
-- test starts the milter with this policy (see miltertest_test.go):
--   [system] uri = "https://mx.mt.example/opes/"
--   a tag service "external": header "X-OPES-Tag: external",
--   subject_prefix "[EXTERNAL]", run by a rule for everyone.
--   miltertest -D sock=unix:/path/opes.sock -s integration/miltertest/placement.lua
-- Optional: -D system=URI, -D lib=PATH.
dofile(lib or "integration/miltertest/common.lua")
system = system or "https://mx.mt.example/opes/"

mt.echo("*** tag policy: negotiation")
local conn = open()
-- The tag service reads and changes the header; it never answers a
-- single field, and needs neither the envelope nor the body.
want_option(conn, "SMFIP_NOHDRS", false)
want_option(conn, "SMFIP_NOHREPL", true)
want_option(conn, "SMFIP_NOBODY", true)
want_option(conn, "SMFIP_HDR_LEADSPC", true)

mt.echo("*** tag policy: trace on top, above an upstream trace; tag appended; Subject changed")
step(conn, SMFIP_NOCONNECT, "conninfo", SMFIR_CONTINUE, mt.conninfo, "client.example.org", "192.0.2.7")
step(conn, SMFIP_NOMAIL, "mailfrom", SMFIR_CONTINUE, mt.mailfrom, "<alice@example.org>")
step(conn, SMFIP_NORCPT, "rcptto", SMFIR_CONTINUE, mt.rcptto, "<bob@example.net>")
header(conn, "Received", " from upstream.example by relay.example; Tue, 24 Nov 2026 10:00:00 +0000")
header(conn, "OPES-System", " https://upstream.example/opes/; id=UP1")
header(conn, "OPES-Via", " https://upstream.example/opes/; id=UP1")
header(conn, "From", " Alice <alice@example.org>")
header(conn, "Subject", " hello")
step(conn, SMFIP_NOEOH, "eoh", SMFIR_CONTINUE, mt.eoh)
step(conn, SMFIP_NOBODY, "body", SMFIR_CONTINUE, mt.bodystring, "Hello.\r\n")
check(mt.eom(conn), "eom")
expect(conn, "eom", SMFIR_ACCEPT)
-- Our trace at index 0, above the upstream one and above Received.
local _, via = trace(conn, system, ULID)
if not string.find(via, system .. "svc/external", 1, true) then
  fail("OPES-Via [" .. via .. "] does not name the external service")
end
-- The upstream trace stays as it came: not changed, not deleted.
for _, name in ipairs({"OPES-System", "OPES-Via", "Received"}) do
  if mt.eom_check(conn, MT_HDRCHANGE, name) or mt.eom_check(conn, MT_HDRDELETE, name) then
    fail("upstream field " .. name .. " was changed or deleted")
  end
end
-- The service's own field goes to the end, the Subject gets its prefix.
if not mt.eom_check(conn, MT_HDRADD, "X-OPES-Tag", " external") then
  fail("X-OPES-Tag: external was not appended")
end
if mt.eom_check(conn, MT_HDRINSERT, "X-OPES-Tag") then
  fail("X-OPES-Tag was inserted, want appended")
end
if not mt.eom_check(conn, MT_HDRCHANGE, "Subject", " [EXTERNAL] hello") then
  fail("Subject was not changed to [EXTERNAL] hello")
end
mt.disconnect(conn)

mt.echo("*** placement.lua: all passed")

-- opes-milter refusing in the SMTP dialog, driven by miltertest. The Go
-- test starts the milter with this policy (see miltertest_test.go):
--   [system] uri = "https://mx.mt.example/opes/"
--   an acl service "access" denying sender blocked@example.org at MAIL
--   and recipient trap@example.net at RCPT, run by a rule for everyone.
--   miltertest -D sock=inet:PORT@127.0.0.1 -s integration/miltertest/refuse.lua
-- Optional: -D system=URI, -D blocked=ADDR, -D trap=ADDR, -D lib=PATH.
-- Only the reply code is visible to miltertest before end of message: the
-- text of a refusal (multi-line, with the trace) is checked by the
-- Postfix and Sendmail tests.
dofile(lib or "integration/miltertest/common.lua")
system = system or "https://mx.mt.example/opes/"
blocked = blocked or "blocked@example.org"
trap = trap or "trap@example.net"

mt.echo("*** acl policy: negotiation")
local conn = open()
-- The policy reads the envelope: MAIL and RCPT must reach it.
want_option(conn, "SMFIP_NOMAIL", false)
want_option(conn, "SMFIP_NORCPT", false)
want_option(conn, "SMFIP_NOBODY", true)

mt.echo("*** acl policy: MAIL FROM:<" .. blocked .. "> is refused")
step(conn, SMFIP_NOCONNECT, "conninfo", SMFIR_CONTINUE, mt.conninfo, "client.example.org", "192.0.2.7")
step(conn, SMFIP_NOHELO, "helo", SMFIR_CONTINUE, mt.helo, "client.example.org")
step(conn, SMFIP_NOMAIL, "mailfrom " .. blocked, SMFIR_REPLYCODE, mt.mailfrom, "<" .. blocked .. ">")
check(mt.abort(conn), "abort")

mt.echo("*** acl policy: RCPT TO:<" .. trap .. "> is refused, the next recipient is not")
mt.macro(conn, SMFIC_MAIL, "i", "MTQ2")
step(conn, SMFIP_NOMAIL, "mailfrom", SMFIR_CONTINUE, mt.mailfrom, "<alice@example.org>")
step(conn, SMFIP_NORCPT, "rcptto " .. trap, SMFIR_REPLYCODE, mt.rcptto, "<" .. trap .. ">")
step(conn, SMFIP_NORCPT, "rcptto ok@example.net", SMFIR_CONTINUE, mt.rcptto, "<ok@example.net>")
check(mt.eom(conn), "eom")
expect(conn, "eom", SMFIR_ACCEPT)
local _, via = trace(conn, system, literal("MTQ2"))
if not string.find(via, system .. "svc/access", 1, true) then
  fail("OPES-Via [" .. via .. "] does not name the access service")
end
mt.disconnect(conn)

mt.echo("*** refuse.lua: all passed")

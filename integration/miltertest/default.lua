-- opes-milter with its embedded default policy, driven by miltertest:
-- it asks only for end of message, accepts, and inserts the OPES trace.
--   miltertest -D sock=inet:10028@127.0.0.1 -s integration/miltertest/default.lua
-- Optional: -D system=URI (default https://localhost/opes/), -D qid=ID
-- (the queue id sent in the {i} macro, default MTQ1A2B3C), -D lib=PATH.
dofile(lib or "integration/miltertest/common.lua")
system = system or "https://localhost/opes/"
qid = qid or "MTQ1A2B3C"

mt.echo("*** default policy: negotiation")
local conn = open()
-- The default policy reads nothing before end of message: every earlier
-- stage is switched off, so the MTA saves a round trip per stage.
for _, name in ipairs({"SMFIP_NOCONNECT", "SMFIP_NOHELO", "SMFIP_NOMAIL", "SMFIP_NORCPT",
                       "SMFIP_NODATA", "SMFIP_NOHDRS", "SMFIP_NOEOH", "SMFIP_NOBODY",
                       "SMFIP_NOUNKNOWN", "SMFIP_HDR_LEADSPC"}) do
  want_option(conn, name, true)
end
if not mt.test_action(conn, SMFIF_ADDHDRS) then fail("negotiation: SMFIF_ADDHDRS not requested") end

mt.echo("*** default policy: connect, helo, mail, rcpt, header, body, eom")
-- Each stage is attempted; miltertest must refuse the ones switched off.
step(conn, SMFIP_NOCONNECT, "conninfo", SMFIR_CONTINUE, mt.conninfo, "client.example.org", "192.0.2.7")
step(conn, SMFIP_NOHELO, "helo", SMFIR_CONTINUE, mt.helo, "client.example.org")
mt.macro(conn, SMFIC_MAIL, "i", qid)
step(conn, SMFIP_NOMAIL, "mailfrom", SMFIR_CONTINUE, mt.mailfrom, "<alice@example.org>")
step(conn, SMFIP_NORCPT, "rcptto", SMFIR_CONTINUE, mt.rcptto, "<bob@example.net>")
step(conn, SMFIP_NODATA, "data", SMFIR_CONTINUE, mt.data)
step(conn, SMFIP_NOHDRS, "header", SMFIR_CONTINUE, mt.header, "Subject", " hello")
step(conn, SMFIP_NOEOH, "eoh", SMFIR_CONTINUE, mt.eoh)
step(conn, SMFIP_NOBODY, "body", SMFIR_CONTINUE, mt.bodystring, "Hello.\r\n")
check(mt.eom(conn), "eom")
expect(conn, "eom", SMFIR_ACCEPT)
-- The queue id from the {i} macro is the trace id.
local id, via = trace(conn, system, literal(qid))
if via ~= " " .. system .. "; id=" .. id then
  fail("OPES-Via [" .. via .. "]: the default policy runs no service, want the system entry only")
end
if mt.eom_check(conn, MT_HDRCHANGE) or mt.eom_check(conn, MT_HDRDELETE) or
   mt.eom_check(conn, MT_BODYCHANGE) or mt.eom_check(conn, MT_QUARANTINE) then
  fail("the default policy changed more than the trace")
end
mt.disconnect(conn)

mt.echo("*** default policy: no queue id, the milter makes a trace id")
conn = open()
check(mt.eom(conn), "eom")
expect(conn, "eom", SMFIR_ACCEPT)
trace(conn, system, ULID)
mt.disconnect(conn)

mt.echo("*** default.lua: all passed")

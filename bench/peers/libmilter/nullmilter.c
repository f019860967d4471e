/*
 * nullmilter.c: the floor of the end-to-end benchmark written against
 * Sendmail's libmilter (C, one thread per connection, blocking reads), to
 * tell the cost of having any milter behind Postfix from the cost of the
 * Go runtime. Like bench/cmd/nullmilter it adds one header field at the
 * end of the message and negotiates every other stage away.
 *
 *   cc -O2 -o nullmilter-c nullmilter.c -lmilter -pthread
 *   nullmilter-c unix:/path/to.sock
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <libmilter/mfapi.h>

static sfsistat negotiate(SMFICTX *ctx, unsigned long f0, unsigned long f1,
			  unsigned long f2, unsigned long f3, unsigned long *pf0,
			  unsigned long *pf1, unsigned long *pf2, unsigned long *pf3)
{
	const unsigned long skip = SMFIP_NOCONNECT | SMFIP_NOHELO | SMFIP_NOMAIL |
		SMFIP_NORCPT | SMFIP_NOBODY | SMFIP_NOHDRS | SMFIP_NOEOH |
		SMFIP_NOUNKNOWN | SMFIP_NODATA;

	(void) ctx; (void) f2; (void) f3;
	if ((f0 & SMFIF_ADDHDRS) == 0)
		return SMFIS_REJECT;
	*pf0 = SMFIF_ADDHDRS;
	*pf1 = f1 & skip; /* only what the MTA offers */
	*pf2 = *pf3 = 0;
	return SMFIS_CONTINUE;
}

static sfsistat eom(SMFICTX *ctx)
{
	if (smfi_addheader(ctx, "X-Bench", "1") != MI_SUCCESS)
		return SMFIS_TEMPFAIL;
	return SMFIS_ACCEPT;
}

int main(int argc, char **argv)
{
	struct smfiDesc desc;

	if (argc != 2 || strncmp(argv[1], "unix:", 5) != 0) {
		fprintf(stderr, "usage: %s unix:/path/to.sock\n", argv[0]);
		return 2;
	}
	memset(&desc, 0, sizeof desc);
	desc.xxfi_name = "nullmilter-c";
	desc.xxfi_version = SMFI_VERSION;
	desc.xxfi_flags = SMFIF_ADDHDRS;
	desc.xxfi_eom = eom;
	desc.xxfi_negotiate = negotiate;
	umask(0); /* Postfix's smtpd runs as user postfix: socket mode 0666 */
	if (smfi_setconn(argv[1]) != MI_SUCCESS || smfi_register(desc) != MI_SUCCESS ||
	    smfi_opensocket(1) != MI_SUCCESS) {
		fprintf(stderr, "%s: cannot listen on %s\n", argv[0], argv[1]);
		return 1;
	}
	return smfi_main() == MI_SUCCESS ? 0 : 1;
}

package enginetest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// RspamdAptHint installs the engine the rspamd tests scan with.
const RspamdAptHint = "apt-get install -y --no-install-recommends rspamd (started by the tests, never as a system service)"

// Test tokens the rules of the test rspamd react to (see rspamdTestRules).
const (
	// RspamdScoreToken followed by a number ("OPES-TEST-SCORE=7.5") gives
	// the message exactly that score through the symbol OPES_TEST_SCORE.
	RspamdScoreToken = "OPES-TEST-SCORE="
	// RspamdSoftRejectToken makes rspamd answer "soft reject".
	RspamdSoftRejectToken = "OPES-TEST-SOFT-REJECT"
	// RspamdEnvelopeToken makes rspamd report what it was told about the
	// envelope and the client, as the options of the symbol
	// OPES_TEST_ENVELOPE: "from=a@b", "rcpt=c@d" (one per recipient),
	// "ip=...", "helo=...", "hostname=...", "user=...", "queue-id=...".
	RspamdEnvelopeToken = "OPES-TEST-ENVELOPE"
)

// GTUBE variants rspamd knows when enable_test_patterns is on: each
// forces one action (GTUBE itself forces "reject").
const (
	GTUBEAddHeader      = "YJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
	GTUBERewriteSubject = "ZJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
	GTUBENoAction       = "AJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
)

// Action thresholds of the test rspamd: the stock Debian ones plus
// rewrite_subject, so that every action is reachable by score.
const (
	RspamdGreylist       = 4.0
	RspamdAddHeader      = 6.0
	RspamdRewriteSubject = 8.0
	RspamdReject         = 15.0
)

// rspamdTestRules are the Lua rules of the test rspamd: a token in the
// message decides the outcome, so a test reaches every action of the real
// daemon with a known score.
const rspamdTestRules = `-- opes-milter test rules (internal/enginetest)
local function content(task) return tostring(task:get_content()) end
rspamd_config:register_symbol({
  name = 'OPES_TEST_SCORE',
  score = 1.0,
  callback = function(task)
    local s = content(task):match('OPES%-TEST%-SCORE=(%-?%d+%.?%d*)')
    if s then task:insert_result('OPES_TEST_SCORE', tonumber(s)) end
  end,
})
rspamd_config:register_symbol({
  name = 'OPES_TEST_SOFT_REJECT',
  score = 0.0,
  callback = function(task)
    if content(task):find('OPES-TEST-SOFT-REJECT', 1, true) then
      task:insert_result('OPES_TEST_SOFT_REJECT', 1.0)
      task:set_pre_result('soft reject', 'Try again later (test)', 'opes-test')
    end
  end,
})
rspamd_config:register_symbol({
  name = 'OPES_TEST_ENVELOPE',
  score = 0.0,
  callback = function(task)
    if not content(task):find('OPES-TEST-ENVELOPE', 1, true) then return end
    local opts = {}
    local from = task:get_from('smtp')
    if from and from[1] then table.insert(opts, 'from=' .. (from[1].addr or '')) end
    for _, r in ipairs(task:get_recipients('smtp') or {}) do table.insert(opts, 'rcpt=' .. (r.addr or '')) end
    local ip = task:get_from_ip()
    if ip and ip:is_valid() then table.insert(opts, 'ip=' .. tostring(ip)) end
    if task:get_helo() then table.insert(opts, 'helo=' .. task:get_helo()) end
    if task:get_hostname() then table.insert(opts, 'hostname=' .. task:get_hostname()) end
    if task:get_user() then table.insert(opts, 'user=' .. task:get_user()) end
    if task:get_queue_id() then table.insert(opts, 'queue-id=' .. task:get_queue_id()) end
    task:insert_result('OPES_TEST_ENVELOPE', 1.0, opts)
  end,
})
`

// rspamdEnglish is the language profile the Debian package ships.
const rspamdEnglish = "/usr/share/rspamd/languages/en.json"

// RspamdOptions configure StartRspamd.
type RspamdOptions struct {
	// Dir is the directory for the configuration, caches, socket and log.
	// If empty, StartRspamd makes one and Stop removes it; a given Dir is
	// left to the caller.
	Dir string
	// Started, if set, is called with rspamd's pid as soon as it runs,
	// before the readiness wait; an error stops rspamd. (rspamd's main
	// process keeps its user, so the parent-death signal holds; its
	// workers run as _rspamd in the PID namespace of the main process.)
	Started func(pid int) error
}

// Rspamd is an rspamd with a configuration of its own instead of the
// stock /etc/rspamd: one normal worker (no controller, proxy or fuzzy
// worker), no Redis (so no Bayes, neural, greylist or ratelimit module),
// none of the stock rules or maps (nothing is downloaded), DNS pointed at
// 127.0.0.1:53 where nothing answers, the GTUBE test patterns enabled and
// the test rules of rspamdTestRules. Actions: greylist 4, add header 6,
// rewrite subject 8, reject 15.
//
// It answers /ping 0.1-0.2 s after the start (0.1 s of CPU) instead of
// the 16.6 s of the stock configuration. Two things cost nearly all of
// that, both multipatterns rspamd compiles at every cold start: the 9628
// public suffixes of effective_tld_names.dat (the test instance gets a
// list of six) and the stop words of the 46 languages of the language
// detector (the test instance loads English only, about 1.2 s of CPU
// saved). disable_hyperscan and the absence of the stock rules do the
// rest. Addr and Socket are the normal worker's.
type Rspamd struct {
	daemon
	endpoints
}

// StartRspamd writes the configuration, starts rspamd in the foreground
// on a free loopback port and a unix socket, and waits until /ping
// answers. The error names the apt command when rspamd is missing.
func StartRspamd(opts RspamdOptions) (*Rspamd, error) {
	bin, err := LookBin("rspamd", RspamdAptHint)
	if err != nil {
		return nil, err
	}
	dir, owns, err := workDir(opts.Dir, "rspamd")
	if err != nil {
		return nil, err
	}
	r := &Rspamd{daemon: daemon{dir: dir, ownsDir: owns}}
	if err := r.start(bin, opts.Started); err != nil {
		r.Stop()
		return nil, err
	}
	return r, nil
}

func (r *Rspamd) start(bin string, started func(int) error) error {
	dir := r.dir
	var err error
	if r.endpoints, err = newEndpoints(dir, "rspamd.sock"); err != nil {
		return err
	}
	conf := fmt.Sprintf(`# opes-milter test rspamd (internal/enginetest); nothing of /etc/rspamd
options {
  pidfile = %[1]q;
  filters = "";
  dns { nameserver = ["127.0.0.1:53"]; timeout = 0.2s; retransmits = 1; }
  enable_test_patterns = true;
  disable_hyperscan = true;
  local_addrs = [];
  url_tld = %[2]q;
  hs_cache_dir = %[3]q;
  tempdir = %[3]q;
}
logging { type = "file"; filename = %[4]q; level = "info"; }
worker "normal" {
  bind_socket = %[5]q;
  bind_socket = "%[6]s mode=0666";
  count = 1;
  task_timeout = 10s;
}
actions {
  greylist = %[7]g;
  add_header = %[8]g;
  rewrite_subject = %[9]g;
  reject = %[10]g;
  subject = "***SPAM*** %%s";
}
lua = %[11]q;
`, filepath.Join(dir, "rspamd.pid"), filepath.Join(dir, "tld.dat"), dir+"/", filepath.Join(dir, "rspamd.log"),
		r.addr, r.sock, RspamdGreylist, RspamdAddHeader, RspamdRewriteSubject, RspamdReject,
		filepath.Join(dir, "test.lua"))
	// The language detector with English only; without the Debian file
	// (another layout) rspamd loads all languages, which is slower but
	// works the same.
	lang := ""
	if _, err := os.Stat(rspamdEnglish); err == nil {
		langs := filepath.Join(dir, "languages")
		if err := os.Mkdir(langs, 0o755); err != nil {
			return err
		}
		if err := os.Symlink(rspamdEnglish, filepath.Join(langs, "en.json")); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(langs, "stop_words"), []byte(`{ "en": ["the", "and", "of", "to", "a", "in", "is", "it"] }`+"\n"), 0o644); err != nil {
			return err
		}
		lang = fmt.Sprintf("lang_detection { languages = %q; }\n", langs)
	}
	conf += lang
	files := map[string]string{
		"rspamd.conf": conf,
		"test.lua":    rspamdTestRules,
		// The names the tests use; a URL with another suffix is still
		// parsed, only not split into a registered domain.
		"tld.dat": "com\nnet\norg\ntest\nexample\ninvalid\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	args := []string{"-f", "-c", filepath.Join(dir, "rspamd.conf")}
	if os.Geteuid() == 0 {
		// rspamd refuses to run its workers as root.
		if err := r.dropRootTo("_rspamd", "rspamd", RspamdAptHint, dir); err != nil {
			return err
		}
		args = append(args, "-u", "_rspamd", "-g", "_rspamd")
	}
	r.cmd = exec.Command(bin, args...)
	dieWithParent(r.cmd)
	ownPIDNamespace(r.cmd)
	start := time.Now()
	if err := r.daemon.start("rspamd.out"); err != nil {
		if !hasCloneflags(r.cmd) {
			return err
		}
		// No right to make a namespace here (a container): start without.
		r.cmd = exec.Command(bin, args...)
		dieWithParent(r.cmd)
		if err := r.daemon.start("rspamd.out"); err != nil {
			return err
		}
	}
	return r.waitReady("rspamd", start, 20*time.Millisecond, started, func() error { return RspamdPing(r.addr) }, r.Logs)
}

// Stop stops rspamd (SIGTERM, which takes the workers down; SIGKILL after
// 10 s), waits for the exit and removes the directory StartRspamd made. It
// may be called more than once.
func (r *Rspamd) Stop() { r.stop(10 * time.Second) }

// Logs returns the tails of rspamd's output and log file.
func (r *Rspamd) Logs() string { return logs(r.dir, 40, "rspamd.out", "rspamd.log") }

// RspamdPing asks GET /ping on addr, expecting "pong".
func RspamdPing(addr string) error {
	br, c, err := ask(addr, "GET /ping HTTP/1.0\r\n\r\n")
	if err != nil {
		return err
	}
	defer c.Close()
	status, err := br.ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.Contains(status, " 200 ") {
		return fmt.Errorf("unexpected status %q", strings.TrimSpace(status))
	}
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return err
		}
		if strings.TrimSpace(line) == "" {
			break
		}
	}
	body, _ := br.ReadString('\n')
	if !strings.HasPrefix(body, "pong") {
		return fmt.Errorf("unexpected answer %q", body)
	}
	return nil
}

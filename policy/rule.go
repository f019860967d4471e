package policy

import (
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/opesmilter/opes-milter/opes"
	"github.com/opesmilter/opes-milter/opes/match"
)

// rules builds the [[rule]] blocks into pol.Rules in file order, the
// order in which the processor tries them.
func (l *loader) rules(v any, prim toml.Primitive, svcs map[string]*serviceDef, pol *opes.Policy) {
	base := path{{key: "rule"}}
	elems := l.tableArray(v, base)
	prims := l.elementPrimitives(prim, len(elems))
	names := map[string]path{}
	svcNames := make([]string, 0, len(svcs))
	for n := range svcs {
		svcNames = append(svcNames, n)
	}
	sort.Strings(svcNames)
	for i, raw := range elems {
		p := base.index(i + 1)
		t, ok := l.table(raw, p, ruleKeys)
		if !ok {
			continue
		}
		r := &opes.Rule{Name: fmt.Sprintf("rule-%d", i+1)}
		nameAt := p
		if name, ok := t.str("name"); ok {
			r.Name, nameAt = name, p.key("name")
			if !opes.IsToken(name) {
				l.errorf(nameAt, "%q is not a token: use letters, digits, '-', '_' or '.'", name)
			}
		}
		prev, dup := names[r.Name]
		if dup {
			l.errorf(nameAt, "rule %q is already defined at %s", r.Name, l.where(prev))
		} else {
			names[r.Name] = nameAt
		}
		if l.sysURI != "" && opes.IsToken(r.Name) {
			r.URI = l.sysURI + "rule/" + r.Name
			if err := opes.CheckAgentURI(r.URI); err != nil {
				l.errorf(nameAt, "rule URI: %v", err)
			} else if !dup {
				l.uniqueURI(r.URI, nameAt, p)
			}
		}

		// Condition first: its stage is the default of the rule's.
		var spec match.Spec
		var cond *match.Condition
		specOK := false
		if w, has := t.m["when"]; has {
			if _, ok := w.(map[string]any); !ok {
				l.errorf(p.key("when"), "expected a table, found %s", tomlType(w))
			} else if wp, ok := l.field(prims[i], "when"); ok {
				d := &sectionDecoder{l: l, raw: w, prim: wp, p: p.key("when")}
				_ = d.decode(&spec)
				d.finish("")
				if !d.failed {
					specOK = true
					cond = l.compileWhen(spec, p.key("when"))
				}
			}
		}
		r.Stage = opes.StageConnect
		if cond != nil {
			r.Stage = cond.EarliestStage()
		}
		if s, ok := t.str("stage"); ok {
			st, err := opes.ParseStage(s)
			if err != nil {
				l.errorf(p.key("stage"), "%v", err)
			} else {
				r.Stage = st
				if specOK {
					l.checkWhenStage(spec, st, p.key("when"))
				}
			}
		}
		if cond != nil && !cond.Empty() {
			r.When = cond
		}

		run, runOK := t.strings("run")
		seen := map[string]bool{}
		for j, n := range run {
			at := p.key("run").index(j + 1)
			def, ok := svcs[n]
			switch {
			case !ok:
				l.errorf(at, "unknown service %q%s", n, suggest(n, svcNames))
				runOK = false
				continue
			case seen[n]:
				l.errorf(at, "service %q is listed twice", n)
				continue
			}
			seen[n] = true
			if def.spec.Impl != nil {
				if st := def.spec.Impl.Needs().Stages; st != 0 && !anyFrom(st, r.Stage) {
					l.errorf(at, "service %q acts only at %s; enabled at stage %s it would never run", n, stageList(st), r.Stage)
				}
			}
			r.Run = append(r.Run, def.spec)
		}

		r.Verdict = l.ruleVerdict(t)
		if r.Verdict == nil && !t.has("verdict") && len(run) == 0 && (runOK || !t.has("run")) {
			l.errorf(p, "neither runs a service nor sets a verdict (give it run = [...], verdict = \"...\" or both)")
		}
		pol.Rules = append(pol.Rules, r)
	}
}

// ruleVerdict reads verdict, reply, code, enhanced and reason.
func (l *loader) ruleVerdict(t table) *opes.Verdict {
	p := t.p
	s, hasVerdict := t.str("verdict")
	var kind opes.VerdictKind
	if hasVerdict {
		k, err := opes.ParseVerdictKind(s)
		if err != nil {
			l.errorf(p.key("verdict"), "%v", err)
			hasVerdict = false
		}
		kind = k
	}
	refuses := kind == opes.Reject || kind == opes.TempFail || kind == opes.Discard
	v := &opes.Verdict{Kind: kind}
	for _, k := range []string{"reply", "code", "enhanced"} {
		switch {
		case !t.has(k):
		case !t.has("verdict"):
			l.report(p.key(k), true, fmt.Sprintf("%s: needs a reject, tempfail or discard verdict", p.key(k)))
		case hasVerdict && !refuses:
			l.report(p.key(k), true, fmt.Sprintf("%s: verdict %q sends no reply; only reject, tempfail and discard do", p.key(k), kind))
		}
	}
	if refuses && hasVerdict {
		class := 5
		if kind == opes.TempFail {
			class = 4
		}
		if n, ok := t.integer("code"); ok {
			if n < 100 || n > 999 || int(n)/100 != class {
				l.errorf(p.key("code"), "%d is not a %dxx reply code, as verdict %q needs", n, class, kind)
			} else {
				v.Reply.Code = int(n)
			}
		}
		if e, ok := t.str("enhanced"); ok {
			// The class is checked against the verdict, not the code: the
			// code may be absent (the processor then uses the stage's
			// default, which has the verdict's class) or wrong itself.
			if err := opes.CheckEnhancedCode(class*100, e); err != nil {
				if len(e) > 1 && e[0] != byte('0'+class) && e[1] == '.' && opes.CheckEnhancedCode(int(e[0]-'0')*100, e) == nil {
					l.errorf(p.key("enhanced"), "%q is not a %d.x.x code, as verdict %q needs", e, class, kind)
				} else {
					l.errorf(p.key("enhanced"), "%v", err)
				}
			} else {
				v.Reply.Enhanced = e
			}
		}
		if text, ok := t.str("reply"); ok {
			if err := checkText(text, maxText); err != nil {
				l.errorf(p.key("reply"), "%v", err)
			}
			v.Reply.Text = text
		}
	}
	if reason, ok := t.str("reason"); ok {
		if !t.has("verdict") {
			l.report(p.key("reason"), true, fmt.Sprintf("%s: needs a verdict", p.key("reason")))
		} else if err := checkText(reason, maxText); err != nil {
			l.errorf(p.key("reason"), "%v", err)
		}
		v.Reason = reason
	}
	if !hasVerdict {
		return nil
	}
	return v
}

func anyFrom(set opes.StageSet, from opes.Stage) bool {
	for st := from; st <= opes.StageEOM; st++ {
		if set.Has(st) {
			return true
		}
	}
	return false
}

func stageList(set opes.StageSet) string {
	var out []string
	for st := opes.StageConnect; st <= opes.StageEOM; st++ {
		if set.Has(st) {
			out = append(out, st.String())
		}
	}
	return strings.Join(out, ", ")
}

// compileWhen compiles a rule's condition. match.Compile stops at the
// first bad value; compiling every value on its own as well finds the
// others, so one round of editing fixes them all.
func (l *loader) compileWhen(spec match.Spec, p path) *match.Condition {
	cond, err := compileSpec(spec)
	if err == nil {
		return cond
	}
	l.serviceError(err, p, p)
	eachValue(spec, func(key string, idx int, one match.Spec) {
		_, err := compileSpec(one)
		if err == nil {
			return
		}
		var fe *opes.FieldError
		if idx > 0 && errors.As(err, &fe) {
			// one holds a single element, so its index is 1.
			if fp, ok := parsePath(fe.Field); ok && len(fp) >= 2 && fp[0].key == key && fp[1].idx == 1 {
				fp[1].idx = idx
				err = &opes.FieldError{Field: fp.String(), Err: fe.Err}
			}
		}
		l.serviceError(err, p, p)
	})
	return nil
}

// checkWhenStage reports each condition key whose data the MTA has not
// sent yet at the rule's stage: such a rule could never match as meant.
func (l *loader) checkWhenStage(spec match.Spec, st opes.Stage, p path) {
	done := map[string]bool{}
	eachValue(spec, func(key string, _ int, one match.Spec) {
		if done[key] {
			return
		}
		done[key] = true
		c, err := compileSpec(one)
		if err != nil || c == nil {
			return
		}
		if need := c.EarliestStage(); need > st {
			l.report(p.key(key), true, fmt.Sprintf("%s: not known before stage %s, but the rule is evaluated at stage %s", p.key(key), need, st))
		}
	})
}

func compileSpec(s match.Spec) (c *match.Condition, err error) {
	defer func() {
		if r := recover(); r != nil {
			c, err = nil, fmt.Errorf("internal error compiling the condition (please report): %v", r)
		}
	}()
	return match.Compile(s)
}

// eachValue calls fn with a Spec holding one value of s: one element of a
// list key (idx is its 1-based index) or one scalar key (idx 0).
func eachValue(s match.Spec, fn func(key string, idx int, one match.Spec)) {
	rv := reflect.ValueOf(s)
	rt := rv.Type()
	for i := 0; i < rt.NumField(); i++ {
		sf := rt.Field(i)
		fv := rv.Field(i)
		if !sf.IsExported() || sf.Anonymous || fv.IsZero() {
			continue
		}
		key := tagName(sf.Tag.Get("toml"))
		if key == "" {
			key = sf.Name
		}
		if fv.Kind() == reflect.Slice {
			for j := 0; j < fv.Len(); j++ {
				var one match.Spec
				ov := reflect.ValueOf(&one).Elem().Field(i)
				ov.Set(reflect.MakeSlice(sf.Type, 1, 1))
				ov.Index(0).Set(fv.Index(j))
				fn(key, j+1, one)
			}
			continue
		}
		var one match.Spec
		reflect.ValueOf(&one).Elem().Field(i).Set(fv)
		fn(key, 0, one)
	}
}

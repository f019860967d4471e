package policy

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/opesmilter/opes-milter/opes"
	"github.com/opesmilter/opes-milter/opes/builtin"
)

// serviceDef is a [[service]] block as far as it could be built.
type serviceDef struct {
	spec *opes.ServiceSpec
	p    path
}

// services builds every [[service]] block into pol.Services and returns
// the blocks by name for the rules' run lists.
func (l *loader) services(v any, prim toml.Primitive, pol *opes.Policy) map[string]*serviceDef {
	base := path{{key: "service"}}
	elems := l.tableArray(v, base)
	prims := l.elementPrimitives(prim, len(elems))
	defs := map[string]*serviceDef{}
	kinds := builtin.Kinds()
	for i, raw := range elems {
		p := base.index(i + 1)
		t, ok := l.table(raw, p, serviceKeys)
		if !ok {
			continue
		}
		spec := &opes.ServiceSpec{}
		nameOK := false
		if !t.has("name") {
			l.errorf(p.key("name"), "is required")
		} else if name, ok := t.str("name"); ok {
			spec.Name = name
			switch prev := defs[name]; {
			case !opes.IsToken(name):
				l.errorf(p.key("name"), "%q is not a token: use letters, digits, '-', '_' or '.'", name)
			case prev != nil:
				l.errorf(p.key("name"), "service %q is already defined at %s", name, l.where(prev.p))
			default:
				nameOK = true
			}
		}
		if nameOK {
			// Registered even when the rest of the block is broken, so that
			// a rule naming it gets no second, misleading error.
			defs[spec.Name] = &serviceDef{spec: spec, p: p}
		}

		kindOK := false
		if !t.has("kind") {
			l.errorf(p.key("kind"), "is required (one of %s)", strings.Join(kinds, ", "))
		} else if kind, ok := t.str("kind"); ok {
			spec.Kind = kind
			if kindOK = slices.Contains(kinds, kind); !kindOK {
				l.errorf(p.key("kind"), "unknown kind %q%s (known: %s)", kind, suggest(kind, kinds), strings.Join(kinds, ", "))
			}
		}

		if uri, ok := t.str("uri"); ok {
			if err := opes.CheckAgentURI(uri); err != nil {
				l.errorf(p.key("uri"), "%v", err)
			} else {
				spec.URI = uri
				l.uniqueURI(uri, p.key("uri"), p)
			}
		} else if !t.has("uri") && nameOK && l.sysURI != "" {
			spec.URI = l.sysURI + "svc/" + spec.Name
			if err := opes.CheckAgentURI(spec.URI); err != nil {
				l.errorf(p.key("name"), "service URI: %v", err)
			} else {
				l.uniqueURI(spec.URI, p.key("name"), p)
			}
		}
		if b, ok := t.boolean("bypassable"); ok {
			spec.Bypassable = b
		}
		if b, ok := t.boolean("required_for_delivery"); ok {
			spec.RequiredForDelivery = b
		}
		if b, ok := t.boolean("modify_signed"); ok {
			spec.ModifySigned = b
		}
		if s, ok := t.str("on_error"); ok {
			switch s {
			case "tempfail":
				spec.OnError = opes.OnErrorTempFail
			case "continue":
				spec.OnError = opes.OnErrorContinue
				if spec.RequiredForDelivery {
					l.errorf(p.key("on_error"), `"continue" would deliver mail without a service that is required_for_delivery`)
				}
			case "reject":
				spec.OnError = opes.OnErrorReject
			default:
				l.errorf(p.key("on_error"), "unknown value %q (want tempfail, continue or reject)", s)
			}
		}

		opts, hasOpts := t.m["options"]
		if hasOpts {
			if _, ok := opts.(map[string]any); !ok {
				l.errorf(p.key("options"), "expected a table, found %s", tomlType(opts))
				continue
			}
		}
		if !kindOK {
			continue
		}
		d := &sectionDecoder{l: l, raw: opts, p: p.key("options")}
		if hasOpts {
			op, ok := l.field(prims[i], "options")
			if !ok {
				continue
			}
			d.prim = op
		}
		impl, err := newService(spec.Kind, d.decode, l.deps)
		d.finish(fmt.Sprintf("kind %q takes no options", spec.Kind))
		switch {
		case d.failed:
			// The decode problems are reported; the service's error
			// only repeats them.
		case err != nil:
			at := p
			if hasOpts {
				at = p.key("options")
			}
			l.serviceError(err, p.key("options"), at)
		case impl == nil:
			l.errorf(p, "kind %q built no service (internal error)", spec.Kind)
		default:
			spec.Impl = impl
		}
		pol.Services = append(pol.Services, spec)
	}
	return defs
}

// newService calls builtin.New; a panic in a service's constructor
// becomes an error, since a configuration must never crash the daemon.
func newService(kind string, decode func(any) error, deps builtin.Deps) (svc opes.Service, err error) {
	defer func() {
		if r := recover(); r != nil {
			svc, err = nil, fmt.Errorf("internal error in service kind %q (please report): %v", kind, r)
		}
	}()
	return builtin.NewWith(kind, decode, deps)
}

// serviceError places an error from a service constructor or from
// match.Compile: a *opes.FieldError at the key it names below base,
// anything else at fallback.
func (l *loader) serviceError(err error, base, fallback path) {
	if multi, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range multi.Unwrap() {
			l.serviceError(e, base, fallback)
		}
		return
	}
	var fe *opes.FieldError
	if errors.As(err, &fe) {
		msg := "invalid"
		if fe.Err != nil {
			msg = fe.Err.Error()
		}
		if fp, ok := parsePath(fe.Field); ok {
			l.errorf(base.join(fp), "%s", msg)
		} else if fe.Field == "" {
			l.errorf(base, "%s", msg)
		} else {
			l.errorf(base, "%s: %s", fe.Field, msg)
		}
		return
	}
	l.errorf(fallback, "%v", err)
}

// sectionDecoder is the decode function handed to a service kind (for
// [service.options]) or used for [rule.when]. It type-checks before it
// decodes, so every problem is reported with its position.
type sectionDecoder struct {
	l     *loader
	raw   any // nil when the table is absent
	prim  toml.Primitive
	p     path
	calls int
	// unknown has one list per decode call: a kind may decode twice,
	// into different types, and a key is unknown only if no call took it.
	unknown  [][]problem
	mismatch []problem
	failed   bool
}

var errInvalidSection = errors.New("invalid configuration (see the reported errors)")

func (d *sectionDecoder) decode(v any) error {
	rv := reflect.ValueOf(v)
	if !rv.IsValid() || rv.Kind() != reflect.Pointer || rv.IsNil() {
		d.mismatch = append(d.mismatch, problem{p: d.p, msg: fmt.Sprintf("%s: cannot decode into %T (internal error)", d.p, v)})
		d.failed = true
		return errInvalidSection
	}
	d.calls++
	if d.raw == nil {
		return nil
	}
	var c typeCheck
	c.check(d.raw, rv.Type(), d.p)
	d.unknown = append(d.unknown, c.unknown)
	if len(c.mismatch) > 0 {
		d.mismatch = append(d.mismatch, c.mismatch...)
		d.failed = true
		return errInvalidSection
	}
	if err := d.l.primitiveDecode(d.prim, v); err != nil {
		d.mismatch = append(d.mismatch, problem{p: d.p, msg: fmt.Sprintf("%s: %v", d.p, err)})
		d.failed = true
		return errInvalidSection
	}
	return nil
}

// finish reports what the decode calls found. noDecode is the message
// for a table given to something that reads none.
func (d *sectionDecoder) finish(noDecode string) {
	d.l.problems(d.mismatch)
	if m, ok := d.raw.(map[string]any); ok && d.calls == 0 && len(m) > 0 {
		d.l.errorf(d.p, "%s", noDecode)
		d.failed = true
		return
	}
	if len(d.unknown) == 0 {
		return
	}
	for _, pr := range d.unknown[0] {
		everywhere := true
		for _, other := range d.unknown[1:] {
			if !slices.ContainsFunc(other, func(o problem) bool { return o.p.String() == pr.p.String() }) {
				everywhere = false
			}
		}
		if everywhere {
			d.l.report(pr.p, true, pr.msg)
		}
	}
}

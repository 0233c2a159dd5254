package audit

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// Canonicalize returns the RFC 8785 (JCS) canonical form of a JSON text: the
// same value always gives the same bytes, however it was spaced, ordered or
// escaped. It refuses invalid JSON, duplicate member names, invalid UTF-8
// and numbers that are not finite IEEE 754 doubles.
//
// It parses the text itself, in one pass, because the sealer and the
// verifier canonicalize every event's data: encoding/json's token reader
// cost more than the rest of sealing together.
func Canonicalize(raw []byte) ([]byte, error) {
	if !utf8.Valid(raw) {
		return nil, errors.New("canonical JSON: invalid UTF-8")
	}
	return appendCanonical(make([]byte, 0, len(raw)), raw)
}

// appendCanonical appends the canonical form of raw, which must be valid
// UTF-8, to out.
func appendCanonical(out, raw []byte) ([]byte, error) {
	p := parser{in: raw}
	out, err := p.value(out, 0)
	if err != nil {
		return nil, fmt.Errorf("canonical JSON: %w", err)
	}
	p.space()
	if p.i != len(p.in) {
		return nil, fmt.Errorf("canonical JSON: trailing data at offset %d", p.i)
	}
	return out, nil
}

// maxDepth bounds nesting, so that hostile input cannot exhaust the stack.
const maxDepth = 100

type parser struct {
	in []byte
	i  int
}

func (p *parser) space() {
	for p.i < len(p.in) {
		switch p.in[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

func (p *parser) errorf(format string, args ...any) error {
	return fmt.Errorf("offset %d: %s", p.i, fmt.Sprintf(format, args...))
}

// value appends the canonical form of the next value to out.
func (p *parser) value(out []byte, depth int) ([]byte, error) {
	if depth > maxDepth {
		return nil, p.errorf("nested deeper than %d", maxDepth)
	}
	p.space()
	if p.i >= len(p.in) {
		return nil, p.errorf("unexpected end of input")
	}
	switch c := p.in[p.i]; {
	case c == '{':
		return p.object(out, depth)
	case c == '[':
		p.i++
		out = append(out, '[')
		p.space()
		if p.i < len(p.in) && p.in[p.i] == ']' {
			p.i++
			return append(out, ']'), nil
		}
		for {
			var err error
			if out, err = p.value(out, depth+1); err != nil {
				return nil, err
			}
			p.space()
			if p.i >= len(p.in) {
				return nil, p.errorf("unterminated array")
			}
			if p.in[p.i] == ']' {
				p.i++
				return append(out, ']'), nil
			}
			if p.in[p.i] != ',' {
				return nil, p.errorf("want , or ] in an array")
			}
			p.i++
			out = append(out, ',')
		}
	case c == '"':
		s, escaped, err := p.str()
		if err != nil {
			return nil, err
		}
		if !escaped { // already canonical: no escape, no control character
			out = append(out, '"')
			out = append(out, s...)
			return append(out, '"'), nil
		}
		return appendString(out, string(s)), nil
	case c == 't':
		return p.literal(out, "true")
	case c == 'f':
		return p.literal(out, "false")
	case c == 'n':
		return p.literal(out, "null")
	case c == '-' || c >= '0' && c <= '9':
		return p.number(out)
	}
	return nil, p.errorf("unexpected %q", p.in[p.i])
}

func (p *parser) literal(out []byte, lit string) ([]byte, error) {
	if len(p.in)-p.i < len(lit) || string(p.in[p.i:p.i+len(lit)]) != lit {
		return nil, p.errorf("invalid literal")
	}
	p.i += len(lit)
	return append(out, lit...), nil
}

// member is one name of an object and where its canonical value lies in the
// object's scratch buffer.
type member struct {
	name       []byte
	start, end int
}

func (p *parser) object(out []byte, depth int) ([]byte, error) {
	p.i++ // {
	var spare [16]member
	members := spare[:0]
	var vals []byte
	p.space()
	if p.i < len(p.in) && p.in[p.i] == '}' {
		p.i++
		return append(out, '{', '}'), nil
	}
	for {
		p.space()
		if p.i >= len(p.in) || p.in[p.i] != '"' {
			return nil, p.errorf("want a member name")
		}
		name, _, err := p.str()
		if err != nil {
			return nil, err
		}
		p.space()
		if p.i >= len(p.in) || p.in[p.i] != ':' {
			return nil, p.errorf("want : after a member name")
		}
		p.i++
		if vals == nil {
			vals = make([]byte, 0, len(p.in)-p.i)
		}
		start := len(vals)
		if vals, err = p.value(vals, depth+1); err != nil {
			return nil, err
		}
		members = append(members, member{name, start, len(vals)})
		p.space()
		if p.i >= len(p.in) {
			return nil, p.errorf("unterminated object")
		}
		if p.in[p.i] == '}' {
			p.i++
			break
		}
		if p.in[p.i] != ',' {
			return nil, p.errorf("want , or } in an object")
		}
		p.i++
	}
	slices.SortFunc(members, func(x, y member) int { return compareUTF16(x.name, y.name) })
	out = append(out, '{')
	for i, m := range members {
		if i > 0 {
			if bytes.Equal(members[i-1].name, m.name) {
				return nil, fmt.Errorf("duplicate member %q", m.name)
			}
			out = append(out, ',')
		}
		out = appendString(out, string(m.name))
		out = append(out, ':')
		out = append(out, vals[m.start:m.end]...)
	}
	return append(out, '}'), nil
}

// str reads a string and returns its value, and whether it had escapes (its
// value is then decoded, and may need escapes again in canonical form).
// Without escapes the value is a slice of the input.
func (p *parser) str() ([]byte, bool, error) {
	p.i++ // opening quote
	start := p.i
	// Fast path: no escapes.
	for p.i < len(p.in) {
		c := p.in[p.i]
		if c == '"' {
			s := p.in[start:p.i]
			p.i++
			return s, false, nil
		}
		if c == '\\' {
			break
		}
		if c < 0x20 {
			return nil, false, p.errorf("control character in a string")
		}
		p.i++
	}
	// Slow path: find the end, let encoding/json decode the escapes.
	for p.i < len(p.in) {
		switch c := p.in[p.i]; {
		case c == '\\':
			p.i += 2
		case c == '"':
			var s string
			if err := json.Unmarshal(p.in[start-1:p.i+1], &s); err != nil {
				return nil, false, p.errorf("invalid string: %v", err)
			}
			p.i++
			if !utf8.ValidString(s) {
				return nil, false, p.errorf("invalid UTF-16 escape in a string")
			}
			return []byte(s), true, nil
		case c < 0x20:
			return nil, false, p.errorf("control character in a string")
		default:
			p.i++
		}
	}
	return nil, false, p.errorf("unterminated string")
}

// number appends a number as ECMAScript's Number.prototype.toString writes
// it (which is what encoding/json does for a float64).
func (p *parser) number(out []byte) ([]byte, error) {
	start := p.i
	integer := true
	if p.in[p.i] == '-' {
		p.i++
	}
	for p.i < len(p.in) {
		c := p.in[p.i]
		if c >= '0' && c <= '9' {
			p.i++
			continue
		}
		if c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-' {
			integer = false
			p.i++
			continue
		}
		break
	}
	tok := string(p.in[start:p.i])
	if !json.Valid(p.in[start:p.i]) {
		return nil, p.errorf("invalid number %q", tok)
	}
	if integer && len(tok) < 16 { // exact in a double: written as it is
		if tok == "-0" {
			return append(out, '0'), nil
		}
		return append(out, tok...), nil
	}
	f, err := strconv.ParseFloat(tok, 64)
	if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
		return nil, p.errorf("number %s is not a finite double", tok)
	}
	if f == 0 {
		return append(out, '0'), nil
	}
	b, err := json.Marshal(f)
	if err != nil {
		return nil, err
	}
	return append(out, b...), nil
}

// appendString writes s as JCS does: only '"', '\\' and control characters
// are escaped, with the short escapes where JSON has them.
func appendString(b []byte, s string) []byte {
	const hexDigits = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		b = append(b, s[start:i]...)
		start = i + 1
		switch c {
		case '"', '\\':
			b = append(b, '\\', c)
		case '\b':
			b = append(b, '\\', 'b')
		case '\f':
			b = append(b, '\\', 'f')
		case '\n':
			b = append(b, '\\', 'n')
		case '\r':
			b = append(b, '\\', 'r')
		case '\t':
			b = append(b, '\\', 't')
		default:
			b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		}
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// compareUTF16 orders names by their UTF-16 code units, as JCS sorts
// member names. For ASCII, that is byte order.
func compareUTF16(x, y []byte) int {
	if isASCII(x) && isASCII(y) {
		return bytes.Compare(x, y)
	}
	return slices.Compare(utf16.Encode([]rune(string(x))), utf16.Encode([]rune(string(y))))
}

func isASCII(s []byte) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

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
func Canonicalize(raw []byte) ([]byte, error) {
	if !utf8.Valid(raw) {
		// encoding/json would replace the bad bytes: two texts, one form.
		return nil, errors.New("canonical JSON: invalid UTF-8")
	}
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber()
	v, err := readValue(d)
	if err != nil {
		return nil, fmt.Errorf("canonical JSON: %w", err)
	}
	if _, err := d.Token(); err == nil {
		return nil, errors.New("canonical JSON: trailing data after the value")
	}
	return appendCanonical(make([]byte, 0, len(raw)), v)
}

// member is one name and value of an object, in the order read.
type member struct {
	name  string
	value any
}

// readValue reads one value, keeping objects as ordered members so that
// duplicates can be refused.
func readValue(d *json.Decoder) (any, error) {
	tok, err := d.Token()
	if err != nil {
		return nil, err
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			var obj []member
			seen := map[string]bool{}
			for d.More() {
				nt, err := d.Token()
				if err != nil {
					return nil, err
				}
				name := nt.(string)
				if seen[name] {
					return nil, fmt.Errorf("duplicate member %q", name)
				}
				seen[name] = true
				v, err := readValue(d)
				if err != nil {
					return nil, err
				}
				obj = append(obj, member{name, v})
			}
			if _, err := d.Token(); err != nil {
				return nil, err
			}
			if obj == nil {
				obj = []member{}
			}
			return obj, nil
		case '[':
			arr := []any{}
			for d.More() {
				v, err := readValue(d)
				if err != nil {
					return nil, err
				}
				arr = append(arr, v)
			}
			if _, err := d.Token(); err != nil {
				return nil, err
			}
			return arr, nil
		}
		return nil, fmt.Errorf("unexpected %v", t)
	case string:
		if !utf8.ValidString(t) {
			return nil, errors.New("invalid UTF-8 in a string")
		}
		return t, nil
	default:
		return tok, nil // json.Number, bool or nil
	}
}

func appendCanonical(b []byte, v any) ([]byte, error) {
	switch t := v.(type) {
	case nil:
		return append(b, "null"...), nil
	case bool:
		return strconv.AppendBool(b, t), nil
	case string:
		return appendString(b, t), nil
	case json.Number:
		return appendNumber(b, t)
	case []any:
		b = append(b, '[')
		for i, e := range t {
			if i > 0 {
				b = append(b, ',')
			}
			var err error
			if b, err = appendCanonical(b, e); err != nil {
				return nil, err
			}
		}
		return append(b, ']'), nil
	case []member:
		sorted := slices.Clone(t)
		slices.SortFunc(sorted, func(x, y member) int { return compareUTF16(x.name, y.name) })
		b = append(b, '{')
		for i, m := range sorted {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, m.name)
			b = append(b, ':')
			var err error
			if b, err = appendCanonical(b, m.value); err != nil {
				return nil, err
			}
		}
		return append(b, '}'), nil
	}
	return nil, fmt.Errorf("canonical JSON: unexpected %T", v)
}

// appendNumber writes a number as ECMAScript's Number.prototype.toString
// does, which is what encoding/json does for a float64.
func appendNumber(b []byte, n json.Number) ([]byte, error) {
	f, err := strconv.ParseFloat(string(n), 64)
	if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
		return nil, fmt.Errorf("canonical JSON: number %s is not a finite double", n)
	}
	if f == 0 {
		return append(b, '0'), nil // -0 too
	}
	out, err := json.Marshal(f)
	if err != nil {
		return nil, err
	}
	return append(b, out...), nil
}

// appendString writes s as JCS does: only '"', '\\' and control characters
// are escaped, with the short escapes where JSON has them.
func appendString(b []byte, s string) []byte {
	const hexDigits = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c == '\b':
			b = append(b, '\\', 'b')
		case c == '\f':
			b = append(b, '\\', 'f')
		case c == '\n':
			b = append(b, '\\', 'n')
		case c == '\r':
			b = append(b, '\\', 'r')
		case c == '\t':
			b = append(b, '\\', 't')
		case c < 0x20:
			b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}

// compareUTF16 orders strings by their UTF-16 code units, as JCS sorts
// member names.
func compareUTF16(x, y string) int {
	if isASCII(x) && isASCII(y) {
		return cmpStrings(x, y)
	}
	return slices.Compare(utf16.Encode([]rune(x)), utf16.Encode([]rune(y)))
}

func cmpStrings(x, y string) int {
	switch {
	case x < y:
		return -1
	case x > y:
		return 1
	}
	return 0
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

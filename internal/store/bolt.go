package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// The embedded backend: one bbolt file. Every write is one transaction
// that bbolt fsyncs before Update returns, so a write error (a full disk)
// reaches the caller and a crash never leaves half an operation.
//
// Buckets (keys → values):
//
//	meta      "version" → schema version; "qbytes" → stored quarantine bytes
//	pref      recipient NUL sender NUL id → Preference JSON (prefix scans
//	          per recipient, and per recipient and sender at RCPT time)
//	pref_id   id → its key in pref
//	q         id → QuarantineItem JSON
//	q_data    id → message bytes (held items only)
//	q_exp     expires id → "" (held items with an expiry)
//	out       id → OutboxItem JSON without Data
//	out_data  id → message bytes
//	out_due   next-attempt id → "" (queued items)
var (
	bMeta    = []byte("meta")
	bPref    = []byte("pref")
	bPrefID  = []byte("pref_id")
	bQ       = []byte("q")
	bQData   = []byte("q_data")
	bQExp    = []byte("q_exp")
	bOut     = []byte("out")
	bOutData = []byte("out_data")
	bOutDue  = []byte("out_due")

	kVersion = []byte("version")
	kQBytes  = []byte("qbytes")
)

const boltVersion = 1

// boltLockWait is how long Open waits for another process's lock on the
// file before saying so.
const boltLockWait = 2 * time.Second

type boltBackend struct {
	db *bolt.DB
}

func openBolt(ctx context.Context, path string) (*boltBackend, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: boltLockWait})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("store: open %s: locked by another process (waited %v)", path, boltLockWait)
	}
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bMeta, bPref, bPrefID, bQ, bQData, bQExp, bOut, bOutData, bOutDue} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bMeta)
		v := meta.Get(kVersion)
		if v == nil {
			return meta.Put(kVersion, []byte(strconv.Itoa(boltVersion)))
		}
		if n, err := strconv.Atoi(string(v)); err != nil || n > boltVersion {
			return fmt.Errorf("database format version %q is newer than this program's (%d)", v, boltVersion)
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("store: initialise %s: %w", path, err)
	}
	return &boltBackend{db: db}, nil
}

func (b *boltBackend) close() error { return b.db.Close() }

// update and view refuse to start once ctx is done; bbolt itself has no
// cancellation, and its transactions are short.
func (b *boltBackend) update(ctx context.Context, fn func(*bolt.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return b.db.Update(fn)
}

func (b *boltBackend) view(ctx context.Context, fn func(*bolt.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return b.db.View(fn)
}

// timeKey orders times in byte order: microseconds since 1970 with the
// sign bit flipped, big-endian, followed by the id.
func timeKey(t time.Time, id string) []byte {
	k := make([]byte, 8, 8+len(id))
	binary.BigEndian.PutUint64(k, uint64(t.UnixMicro())^(1<<63))
	return append(k, id...)
}

func timeOfKey(k []byte) time.Time {
	return time.UnixMicro(int64(binary.BigEndian.Uint64(k[:8]) ^ (1 << 63))).UTC()
}

// prefKey is unambiguous because addresses cannot contain NUL (checkAddr).
func prefKey(rcpt, sender, id string) []byte { return []byte(rcpt + "\x00" + sender + "\x00" + id) }

// --- preferences

func (b *boltBackend) addPreference(ctx context.Context, p Preference) error {
	v, err := json.Marshal(p)
	if err != nil {
		return err
	}
	return b.update(ctx, func(tx *bolt.Tx) error {
		k := prefKey(p.Recipient, p.Sender, p.ID)
		if err := tx.Bucket(bPref).Put(k, v); err != nil {
			return err
		}
		return tx.Bucket(bPrefID).Put([]byte(p.ID), k)
	})
}

// scanPrefs calls fn for each entry whose key starts with prefix.
func scanPrefs(tx *bolt.Tx, prefixStr string, fn func(Preference) error) error {
	prefix := []byte(prefixStr)
	c := tx.Bucket(bPref).Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		var p Preference
		if err := json.Unmarshal(v, &p); err != nil {
			return fmt.Errorf("decode preference %q: %w", k, err)
		}
		if err := fn(p); err != nil {
			return err
		}
	}
	return nil
}

func sortPrefs(ps []Preference) {
	slices.SortFunc(ps, func(a, b Preference) int { return strings.Compare(a.ID, b.ID) })
}

func (b *boltBackend) listPreferences(ctx context.Context, rcpt string) ([]Preference, error) {
	var ps []Preference
	err := b.view(ctx, func(tx *bolt.Tx) error {
		if rcpt != "" {
			return scanPrefs(tx, rcpt+"\x00", func(p Preference) error { ps = append(ps, p); return nil })
		}
		return tx.Bucket(bPref).ForEach(func(k, v []byte) error {
			var p Preference
			if err := json.Unmarshal(v, &p); err != nil {
				return fmt.Errorf("decode preference %q: %w", k, err)
			}
			ps = append(ps, p)
			return nil
		})
	})
	sortPrefs(ps)
	return ps, err
}

func (b *boltBackend) removePreference(ctx context.Context, id string) error {
	return b.update(ctx, func(tx *bolt.Tx) error {
		ids := tx.Bucket(bPrefID)
		k := ids.Get([]byte(id))
		if k == nil {
			return ErrNotFound
		}
		if err := tx.Bucket(bPref).Delete(k); err != nil {
			return err
		}
		return ids.Delete([]byte(id))
	})
}

func (b *boltBackend) matchPreferences(ctx context.Context, rcpts, senders []string, now time.Time) ([]Preference, error) {
	var ps []Preference
	err := b.view(ctx, func(tx *bolt.Tx) error {
		// Only the entries that match are decoded: the key leads with
		// recipient and sender.
		for _, r := range rcpts {
			for _, snd := range senders {
				err := scanPrefs(tx, r+"\x00"+snd+"\x00", func(p Preference) error {
					if p.Expires.IsZero() || p.Expires.After(now) {
						ps = append(ps, p)
					}
					return nil
				})
				if err != nil {
					return err
				}
			}
		}
		return nil
	})
	sortPrefs(ps)
	return ps, err
}

// --- quarantine

func getJSON(bk *bolt.Bucket, id string, v any) error {
	raw := bk.Get([]byte(id))
	if raw == nil {
		return ErrNotFound
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return fmt.Errorf("decode %s: %w", id, err)
	}
	return nil
}

func putJSON(bk *bolt.Bucket, id string, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return bk.Put([]byte(id), raw)
}

func addQBytes(meta *bolt.Bucket, delta int64) (int64, error) {
	var cur int64
	if v := meta.Get(kQBytes); len(v) == 8 {
		cur = int64(binary.BigEndian.Uint64(v))
	}
	cur += delta
	if cur < 0 {
		cur = 0
	}
	var v [8]byte
	binary.BigEndian.PutUint64(v[:], uint64(cur))
	return cur, meta.Put(kQBytes, v[:])
}

func (b *boltBackend) putQuarantine(ctx context.Context, it QuarantineItem, data []byte, limit int64) error {
	return b.update(ctx, func(tx *bolt.Tx) error {
		total, err := addQBytes(tx.Bucket(bMeta), int64(len(data)))
		if err != nil {
			return err
		}
		if limit > 0 && total > limit {
			// Returning an error rolls the counter back.
			return fmt.Errorf("%w: %d of %d bytes used, message has %d", ErrFull, total-int64(len(data)), limit, len(data))
		}
		if err := putJSON(tx.Bucket(bQ), it.ID, it); err != nil {
			return err
		}
		if err := tx.Bucket(bQData).Put([]byte(it.ID), data); err != nil {
			return err
		}
		if !it.Expires.IsZero() {
			return tx.Bucket(bQExp).Put(timeKey(it.Expires, it.ID), nil)
		}
		return nil
	})
}

func (b *boltBackend) getQuarantine(ctx context.Context, id string) (QuarantineItem, error) {
	var it QuarantineItem
	err := b.view(ctx, func(tx *bolt.Tx) error { return getJSON(tx.Bucket(bQ), id, &it) })
	return it, err
}

func (b *boltBackend) quarantineData(ctx context.Context, id string) ([]byte, error) {
	var data []byte
	err := b.view(ctx, func(tx *bolt.Tx) error {
		v := tx.Bucket(bQData).Get([]byte(id))
		if v == nil {
			var it QuarantineItem
			if err := getJSON(tx.Bucket(bQ), id, &it); err != nil {
				return err
			}
			return fmt.Errorf("%w: message of %s item freed", ErrNotFound, it.Status)
		}
		// v is valid only inside the transaction.
		data = bytes.Clone(v)
		return nil
	})
	return data, err
}

func (b *boltBackend) listQuarantine(ctx context.Context, f QuarantineFilter) ([]QuarantineItem, error) {
	var items []QuarantineItem
	errEnough := errors.New("enough")
	err := b.view(ctx, func(tx *bolt.Tx) error {
		return tx.Bucket(bQ).ForEach(func(k, v []byte) error {
			var it QuarantineItem
			if err := json.Unmarshal(v, &it); err != nil {
				return fmt.Errorf("decode %s: %w", k, err)
			}
			if f.Status != "" && it.Status != f.Status {
				return nil
			}
			if f.Recipient != "" && !slices.Contains(recipientKeys(it.Recipients), f.Recipient) {
				return nil
			}
			items = append(items, it)
			if f.Limit > 0 && len(items) >= f.Limit {
				return errEnough
			}
			return nil
		})
	})
	if errors.Is(err, errEnough) {
		err = nil
	}
	return items, err
}

func (b *boltBackend) setQuarantineStatus(ctx context.Context, id string, status QuarantineStatus, by string, at time.Time) error {
	return b.update(ctx, func(tx *bolt.Tx) error {
		var it QuarantineItem
		if err := getJSON(tx.Bucket(bQ), id, &it); err != nil {
			return err
		}
		if it.Status != Held {
			return fmt.Errorf("%w: already %s", ErrInvalid, it.Status)
		}
		data := tx.Bucket(bQData)
		if _, err := addQBytes(tx.Bucket(bMeta), -int64(len(data.Get([]byte(id))))); err != nil {
			return err
		}
		if err := data.Delete([]byte(id)); err != nil {
			return err
		}
		if !it.Expires.IsZero() {
			if err := tx.Bucket(bQExp).Delete(timeKey(it.Expires, id)); err != nil {
				return err
			}
		}
		it.Status, it.StatusBy, it.StatusAt = status, by, at
		return putJSON(tx.Bucket(bQ), id, it)
	})
}

func (b *boltBackend) expiredQuarantine(ctx context.Context, now time.Time, limit int) ([]QuarantineItem, error) {
	var items []QuarantineItem
	err := b.view(ctx, func(tx *bolt.Tx) error {
		q := tx.Bucket(bQ)
		c := tx.Bucket(bQExp).Cursor()
		for k, _ := c.First(); k != nil && !timeOfKey(k).After(now); k, _ = c.Next() {
			var it QuarantineItem
			if err := getJSON(q, string(k[8:]), &it); err != nil {
				return fmt.Errorf("expiry index names %s: %w", k[8:], err)
			}
			items = append(items, it)
			if limit > 0 && len(items) >= limit {
				break
			}
		}
		return nil
	})
	return items, err
}

// --- outbox

func (b *boltBackend) getOut(tx *bolt.Tx, id string, withData bool) (OutboxItem, error) {
	var it OutboxItem
	if err := getJSON(tx.Bucket(bOut), id, &it); err != nil {
		return it, err
	}
	if withData {
		it.Data = bytes.Clone(tx.Bucket(bOutData).Get([]byte(id)))
	}
	return it, nil
}

func putOut(tx *bolt.Tx, it OutboxItem) error {
	it.Data = nil // kept in out_data, not base64 in the JSON
	return putJSON(tx.Bucket(bOut), it.ID, it)
}

func (b *boltBackend) enqueue(ctx context.Context, it OutboxItem) error {
	return b.update(ctx, func(tx *bolt.Tx) error {
		if err := tx.Bucket(bOutData).Put([]byte(it.ID), it.Data); err != nil {
			return err
		}
		if err := putOut(tx, it); err != nil {
			return err
		}
		return tx.Bucket(bOutDue).Put(timeKey(it.NextAttempt, it.ID), nil)
	})
}

func (b *boltBackend) claim(ctx context.Context, now, until time.Time, limit int) ([]OutboxItem, error) {
	var items []OutboxItem
	err := b.update(ctx, func(tx *bolt.Tx) error {
		items = nil
		due := tx.Bucket(bOutDue)
		// Collect first: changing a bucket under an open cursor is not
		// safe in bbolt.
		var keys [][]byte
		c := due.Cursor()
		for k, _ := c.First(); k != nil && !timeOfKey(k).After(now) && len(keys) < limit; k, _ = c.Next() {
			keys = append(keys, bytes.Clone(k))
		}
		for _, k := range keys {
			it, err := b.getOut(tx, string(k[8:]), true)
			if err != nil {
				return fmt.Errorf("due index names %s: %w", k[8:], err)
			}
			if err := due.Delete(k); err != nil {
				return err
			}
			it.NextAttempt = until
			if err := putOut(tx, it); err != nil {
				return err
			}
			if err := due.Put(timeKey(until, it.ID), nil); err != nil {
				return err
			}
			items = append(items, it)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(items, func(a, b OutboxItem) int { return strings.Compare(a.ID, b.ID) })
	return items, nil
}

func (b *boltBackend) done(ctx context.Context, id string) error {
	return b.update(ctx, func(tx *bolt.Tx) error {
		it, err := b.getOut(tx, id, false)
		if err != nil {
			return err
		}
		if it.Status == Queued {
			if err := tx.Bucket(bOutDue).Delete(timeKey(it.NextAttempt, id)); err != nil {
				return err
			}
		}
		if err := tx.Bucket(bOutData).Delete([]byte(id)); err != nil {
			return err
		}
		return tx.Bucket(bOut).Delete([]byte(id))
	})
}

func (b *boltBackend) retry(ctx context.Context, id string, next time.Time, lastErr string) error {
	return b.update(ctx, func(tx *bolt.Tx) error {
		it, err := b.getOut(tx, id, false)
		if err != nil {
			return err
		}
		due := tx.Bucket(bOutDue)
		if it.Status == Queued {
			if err := due.Delete(timeKey(it.NextAttempt, id)); err != nil {
				return err
			}
		}
		it.Attempts++
		it.NextAttempt, it.LastError, it.Status = next, lastErr, Queued
		if err := putOut(tx, it); err != nil {
			return err
		}
		return due.Put(timeKey(next, id), nil)
	})
}

func (b *boltBackend) fail(ctx context.Context, id string, lastErr string) error {
	return b.update(ctx, func(tx *bolt.Tx) error {
		it, err := b.getOut(tx, id, false)
		if err != nil {
			return err
		}
		if it.Status == Queued {
			if err := tx.Bucket(bOutDue).Delete(timeKey(it.NextAttempt, id)); err != nil {
				return err
			}
		}
		it.Status, it.LastError = Failed, lastErr
		return putOut(tx, it)
	})
}

func (b *boltBackend) listOutbox(ctx context.Context, status OutboxStatus, limit int) ([]OutboxItem, error) {
	var items []OutboxItem
	err := b.view(ctx, func(tx *bolt.Tx) error {
		c := tx.Bucket(bOut).Cursor()
		for k, _ := c.First(); k != nil && (limit == 0 || len(items) < limit); k, _ = c.Next() {
			it, err := b.getOut(tx, string(k), true)
			if err != nil {
				return err
			}
			if status == "" || it.Status == status {
				items = append(items, it)
			}
		}
		return nil
	})
	return items, err
}

func (b *boltBackend) counts(ctx context.Context) (Counts, error) {
	var c Counts
	err := b.view(ctx, func(tx *bolt.Tx) error {
		if err := tx.Bucket(bQ).ForEach(func(k, v []byte) error {
			var it QuarantineItem
			if err := json.Unmarshal(v, &it); err != nil {
				return fmt.Errorf("decode %s: %w", k, err)
			}
			if it.Status == Held {
				c.QuarantineHeld++
				c.QuarantineBytes += it.Size
			}
			return nil
		}); err != nil {
			return err
		}
		return tx.Bucket(bOut).ForEach(func(k, v []byte) error {
			var it OutboxItem
			if err := json.Unmarshal(v, &it); err != nil {
				return fmt.Errorf("decode %s: %w", k, err)
			}
			switch it.Status {
			case Queued:
				c.OutboxQueued++
			case Failed:
				c.OutboxFailed++
			}
			return nil
		})
	})
	return c, err
}

package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// The PostgreSQL backend, for several MX hosts sharing one database.
// Tables are prefixed opes_ so the database can be shared with other
// programs. Operations that read and then write (quarantine accounting,
// status changes, claims) do so in one statement or one transaction with
// row locks, so concurrent hosts cannot both win.

const pgVersion = 1

// pgSchemaLock serialises schema creation between hosts starting at the
// same moment: concurrent CREATE TABLE IF NOT EXISTS can otherwise fail
// on the catalog's unique indexes.
const pgSchemaLock = 0x6f7065735f6d6967 // "opes_mig"

var pgSchema = []string{
	`CREATE TABLE IF NOT EXISTS opes_schema_version (
		id      integer PRIMARY KEY CHECK (id = 1),
		version integer NOT NULL)`,
	`CREATE TABLE IF NOT EXISTS opes_preferences (
		id         text PRIMARY KEY,
		recipient  text NOT NULL,
		sender     text NOT NULL,
		services   text[],
		kind       text NOT NULL,
		created_by text NOT NULL,
		note       text NOT NULL,
		created    timestamptz NOT NULL,
		expires    timestamptz)`,
	// MatchPreferences runs at every RCPT: recipient = ANY(...) AND
	// sender = ANY(...) is an index scan on this.
	`CREATE INDEX IF NOT EXISTS opes_preferences_recipient ON opes_preferences (recipient, sender)`,
	`CREATE TABLE IF NOT EXISTS opes_quarantine (
		id             text PRIMARY KEY,
		trace_id       text NOT NULL,
		queue_id       text NOT NULL,
		sender         text NOT NULL,
		recipients     text[] NOT NULL,
		recipient_keys text[] NOT NULL,
		recipient_args jsonb,
		env_id         text NOT NULL,
		reason         text NOT NULL,
		service        text NOT NULL,
		bypassable     boolean NOT NULL,
		size           bigint NOT NULL,
		created        timestamptz NOT NULL,
		expires        timestamptz,
		status         text NOT NULL,
		status_by      text NOT NULL,
		status_at      timestamptz,
		data           bytea)`,
	`CREATE INDEX IF NOT EXISTS opes_quarantine_expiry ON opes_quarantine (status, expires)`,
	`CREATE INDEX IF NOT EXISTS opes_quarantine_recipient ON opes_quarantine USING gin (recipient_keys)`,
	// One row counting the bytes of held messages, so that the bound is
	// checked and updated atomically by whichever host writes.
	`CREATE TABLE IF NOT EXISTS opes_quarantine_usage (
		id    integer PRIMARY KEY CHECK (id = 1),
		bytes bigint NOT NULL)`,
	`INSERT INTO opes_quarantine_usage (id, bytes) VALUES (1, 0) ON CONFLICT DO NOTHING`,
	`CREATE TABLE IF NOT EXISTS opes_outbox (
		id           text PRIMARY KEY,
		trace_id     text NOT NULL,
		sender       text NOT NULL,
		recipients   text[] NOT NULL,
		data         bytea NOT NULL,
		attempts     integer NOT NULL,
		next_attempt timestamptz NOT NULL,
		last_error   text NOT NULL,
		created      timestamptz NOT NULL,
		status       text NOT NULL)`,
	`CREATE INDEX IF NOT EXISTS opes_outbox_due ON opes_outbox (status, next_attempt)`,
}

type pgBackend struct {
	pool *pgxpool.Pool
}

func openPostgres(ctx context.Context, dsn string) (*pgBackend, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		// The parse error may quote the DSN, password included.
		return nil, fmt.Errorf("store: %w: cannot parse the PostgreSQL DSN", ErrInvalid)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("store: connect to PostgreSQL: %w", err)
	}
	b := &pgBackend{pool: pool}
	if err := b.migrate(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("store: PostgreSQL schema: %w", err)
	}
	return b, nil
}

func (b *pgBackend) migrate(ctx context.Context) error {
	return pgx.BeginFunc(ctx, b.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", int64(pgSchemaLock)); err != nil {
			return err
		}
		for _, stmt := range pgSchema {
			if _, err := tx.Exec(ctx, stmt); err != nil {
				return fmt.Errorf("%.60s: %w", strings.Join(strings.Fields(stmt), " "), err)
			}
		}
		if _, err := tx.Exec(ctx, `INSERT INTO opes_schema_version (id, version) VALUES (1, $1) ON CONFLICT DO NOTHING`, pgVersion); err != nil {
			return err
		}
		var v int
		if err := tx.QueryRow(ctx, `SELECT version FROM opes_schema_version WHERE id = 1`).Scan(&v); err != nil {
			return err
		}
		if v > pgVersion {
			return fmt.Errorf("database schema version %d is newer than this program's (%d)", v, pgVersion)
		}
		return nil
	})
}

func (b *pgBackend) close() error {
	b.pool.Close()
	return nil
}

// nullTime stores the zero time as NULL.
func nullTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func fromNull(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return t.UTC()
}

func notFound(err error) error {
	if errors.Is(err, pgx.ErrNoRows) {
		return ErrNotFound
	}
	return err
}

// limitClause is "" for no limit.
func limitClause(limit int) string {
	if limit <= 0 {
		return ""
	}
	return " LIMIT " + strconv.Itoa(limit)
}

// --- preferences

const prefCols = `id, recipient, sender, services, kind, created_by, note, created, expires`

func scanPref(row pgx.CollectableRow) (Preference, error) {
	var (
		p       Preference
		expires *time.Time
	)
	err := row.Scan(&p.ID, &p.Recipient, &p.Sender, &p.Services, &p.Kind, &p.CreatedBy, &p.Note, &p.Created, &expires)
	p.Services = nilIfEmpty(p.Services)
	p.Created = p.Created.UTC()
	p.Expires = fromNull(expires)
	return p, err
}

func (b *pgBackend) addPreference(ctx context.Context, p Preference) error {
	_, err := b.pool.Exec(ctx, `INSERT INTO opes_preferences (`+prefCols+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
		p.ID, p.Recipient, p.Sender, p.Services, string(p.Kind), p.CreatedBy, p.Note, p.Created, nullTime(p.Expires))
	return err
}

func (b *pgBackend) listPreferences(ctx context.Context, rcpt string) ([]Preference, error) {
	var rows pgx.Rows
	var err error
	if rcpt == "" {
		rows, err = b.pool.Query(ctx, `SELECT `+prefCols+` FROM opes_preferences ORDER BY id`)
	} else {
		rows, err = b.pool.Query(ctx, `SELECT `+prefCols+` FROM opes_preferences WHERE recipient = $1 ORDER BY id`, rcpt)
	}
	if err != nil {
		return nil, err
	}
	ps, err := pgx.CollectRows(rows, scanPref)
	return nilIfEmpty(ps), err
}

func (b *pgBackend) removePreference(ctx context.Context, id string) error {
	tag, err := b.pool.Exec(ctx, `DELETE FROM opes_preferences WHERE id = $1`, id)
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		return ErrNotFound
	}
	return nil
}

func (b *pgBackend) matchPreferences(ctx context.Context, rcpts, senders []string, now time.Time) ([]Preference, error) {
	rows, err := b.pool.Query(ctx, `SELECT `+prefCols+` FROM opes_preferences
		WHERE recipient = ANY($1) AND sender = ANY($2) AND (expires IS NULL OR expires > $3)
		ORDER BY id`, rcpts, senders, now)
	if err != nil {
		return nil, err
	}
	ps, err := pgx.CollectRows(rows, scanPref)
	return nilIfEmpty(ps), err
}

// --- quarantine

const qCols = `id, trace_id, queue_id, sender, recipients, recipient_args, env_id, reason, service,
	bypassable, size, created, expires, status, status_by, status_at`

func scanQ(row pgx.CollectableRow) (QuarantineItem, error) {
	var (
		it                QuarantineItem
		expires, statusAt *time.Time
	)
	err := row.Scan(&it.ID, &it.TraceID, &it.QueueID, &it.Sender, &it.Recipients, &it.RecipientArgs,
		&it.EnvID, &it.Reason, &it.Service, &it.Bypassable, &it.Size, &it.Created, &expires,
		&it.Status, &it.StatusBy, &statusAt)
	it.Recipients = nilIfEmpty(it.Recipients)
	it.RecipientArgs = nilIfEmpty(it.RecipientArgs)
	it.Created = it.Created.UTC()
	it.Expires = fromNull(expires)
	it.StatusAt = fromNull(statusAt)
	return it, err
}

func (b *pgBackend) putQuarantine(ctx context.Context, it QuarantineItem, data []byte, limit int64) error {
	size := int64(len(data))
	return pgx.BeginFunc(ctx, b.pool, func(tx pgx.Tx) error {
		var total int64
		err := tx.QueryRow(ctx, `UPDATE opes_quarantine_usage SET bytes = bytes + $1
			WHERE id = 1 AND ($2::bigint = 0 OR bytes + $1 <= $2::bigint) RETURNING bytes`, size, limit).Scan(&total)
		if errors.Is(err, pgx.ErrNoRows) {
			var used int64
			if err := tx.QueryRow(ctx, `SELECT bytes FROM opes_quarantine_usage WHERE id = 1`).Scan(&used); err != nil {
				return err
			}
			return fmt.Errorf("%w: %d of %d bytes used, message has %d", ErrFull, used, limit, size)
		}
		if err != nil {
			return err
		}
		var args any
		if it.RecipientArgs != nil {
			args = it.RecipientArgs
		}
		_, err = tx.Exec(ctx, `INSERT INTO opes_quarantine (`+qCols+`, recipient_keys, data)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)`,
			it.ID, it.TraceID, it.QueueID, it.Sender, it.Recipients, args, it.EnvID, it.Reason, it.Service,
			it.Bypassable, it.Size, it.Created, nullTime(it.Expires), string(it.Status), it.StatusBy, nullTime(it.StatusAt),
			recipientKeys(it.Recipients), data)
		return err
	})
}

func (b *pgBackend) getQuarantine(ctx context.Context, id string) (QuarantineItem, error) {
	rows, err := b.pool.Query(ctx, `SELECT `+qCols+` FROM opes_quarantine WHERE id = $1`, id)
	if err != nil {
		return QuarantineItem{}, err
	}
	it, err := pgx.CollectExactlyOneRow(rows, scanQ)
	return it, notFound(err)
}

func (b *pgBackend) quarantineData(ctx context.Context, id string) ([]byte, error) {
	var (
		data   []byte
		status string
	)
	err := b.pool.QueryRow(ctx, `SELECT data, status FROM opes_quarantine WHERE id = $1`, id).Scan(&data, &status)
	if err != nil {
		return nil, notFound(err)
	}
	if data == nil {
		return nil, fmt.Errorf("%w: message of %s item freed", ErrNotFound, status)
	}
	return data, nil
}

func (b *pgBackend) listQuarantine(ctx context.Context, f QuarantineFilter) ([]QuarantineItem, error) {
	var (
		where []string
		args  []any
	)
	if f.Status != "" {
		args = append(args, string(f.Status))
		where = append(where, "status = $"+strconv.Itoa(len(args)))
	}
	if f.Recipient != "" {
		args = append(args, []string{f.Recipient})
		where = append(where, "recipient_keys @> $"+strconv.Itoa(len(args)))
	}
	q := `SELECT ` + qCols + ` FROM opes_quarantine`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	rows, err := b.pool.Query(ctx, q+" ORDER BY id"+limitClause(f.Limit), args...)
	if err != nil {
		return nil, err
	}
	items, err := pgx.CollectRows(rows, scanQ)
	return nilIfEmpty(items), err
}

func (b *pgBackend) setQuarantineStatus(ctx context.Context, id string, status QuarantineStatus, by string, at time.Time) error {
	return pgx.BeginFunc(ctx, b.pool, func(tx pgx.Tx) error {
		var size int64
		err := tx.QueryRow(ctx, `UPDATE opes_quarantine SET status = $2, status_by = $3, status_at = $4, data = NULL
			WHERE id = $1 AND status = 'held' RETURNING size`, id, string(status), by, at).Scan(&size)
		if errors.Is(err, pgx.ErrNoRows) {
			var cur string
			if err := tx.QueryRow(ctx, `SELECT status FROM opes_quarantine WHERE id = $1`, id).Scan(&cur); err != nil {
				return notFound(err)
			}
			return fmt.Errorf("%w: already %s", ErrInvalid, cur)
		}
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE opes_quarantine_usage SET bytes = greatest(bytes - $1, 0) WHERE id = 1`, size)
		return err
	})
}

func (b *pgBackend) expiredQuarantine(ctx context.Context, now time.Time, limit int) ([]QuarantineItem, error) {
	rows, err := b.pool.Query(ctx, `SELECT `+qCols+` FROM opes_quarantine
		WHERE status = 'held' AND expires IS NOT NULL AND expires <= $1
		ORDER BY expires, id`+limitClause(limit), now)
	if err != nil {
		return nil, err
	}
	items, err := pgx.CollectRows(rows, scanQ)
	return nilIfEmpty(items), err
}

// --- outbox

const outCols = `id, trace_id, sender, recipients, data, attempts, next_attempt, last_error, created, status`

func scanOut(row pgx.CollectableRow) (OutboxItem, error) {
	var it OutboxItem
	err := row.Scan(&it.ID, &it.TraceID, &it.Sender, &it.Recipients, &it.Data, &it.Attempts,
		&it.NextAttempt, &it.LastError, &it.Created, &it.Status)
	it.Recipients = nilIfEmpty(it.Recipients)
	it.NextAttempt = it.NextAttempt.UTC()
	it.Created = it.Created.UTC()
	return it, err
}

func (b *pgBackend) enqueue(ctx context.Context, it OutboxItem) error {
	_, err := b.pool.Exec(ctx, `INSERT INTO opes_outbox (`+outCols+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
		it.ID, it.TraceID, it.Sender, it.Recipients, it.Data, it.Attempts, it.NextAttempt, it.LastError, it.Created, string(it.Status))
	return err
}

// claim locks the due rows it takes and skips rows another claimer has
// locked, so concurrent claimers on any host never get the same item.
// The CTE runs its SELECT once, which UPDATE ... WHERE id IN (subquery)
// does not promise.
func (b *pgBackend) claim(ctx context.Context, now, until time.Time, limit int) ([]OutboxItem, error) {
	cols := "o." + strings.ReplaceAll(outCols, ", ", ", o.")
	rows, err := b.pool.Query(ctx, `WITH due AS (
			SELECT id FROM opes_outbox WHERE status = 'queued' AND next_attempt <= $1
			ORDER BY next_attempt, id LIMIT $3 FOR UPDATE SKIP LOCKED)
		UPDATE opes_outbox o SET next_attempt = $2 FROM due WHERE o.id = due.id
		RETURNING `+cols, now, until, limit)
	if err != nil {
		return nil, err
	}
	items, err := pgx.CollectRows(rows, scanOut)
	if err != nil {
		return nil, err
	}
	slices.SortFunc(items, func(a, b OutboxItem) int { return strings.Compare(a.ID, b.ID) })
	return nilIfEmpty(items), nil
}

func (b *pgBackend) exec1(ctx context.Context, sql string, args ...any) error {
	tag, err := b.pool.Exec(ctx, sql, args...)
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		return ErrNotFound
	}
	return nil
}

func (b *pgBackend) done(ctx context.Context, id string) error {
	return b.exec1(ctx, `DELETE FROM opes_outbox WHERE id = $1`, id)
}

func (b *pgBackend) retry(ctx context.Context, id string, next time.Time, lastErr string) error {
	return b.exec1(ctx, `UPDATE opes_outbox SET attempts = attempts + 1, next_attempt = $2, last_error = $3, status = 'queued'
		WHERE id = $1`, id, next, lastErr)
}

func (b *pgBackend) fail(ctx context.Context, id string, lastErr string) error {
	return b.exec1(ctx, `UPDATE opes_outbox SET status = 'failed', last_error = $2 WHERE id = $1`, id, lastErr)
}

func (b *pgBackend) listOutbox(ctx context.Context, status OutboxStatus, limit int) ([]OutboxItem, error) {
	var (
		rows pgx.Rows
		err  error
	)
	if status == "" {
		rows, err = b.pool.Query(ctx, `SELECT `+outCols+` FROM opes_outbox ORDER BY id`+limitClause(limit))
	} else {
		rows, err = b.pool.Query(ctx, `SELECT `+outCols+` FROM opes_outbox WHERE status = $1 ORDER BY id`+limitClause(limit), string(status))
	}
	if err != nil {
		return nil, err
	}
	items, err := pgx.CollectRows(rows, scanOut)
	return nilIfEmpty(items), err
}

func (b *pgBackend) counts(ctx context.Context) (Counts, error) {
	var c Counts
	err := b.pool.QueryRow(ctx, `SELECT
		(SELECT count(*) FROM opes_quarantine WHERE status = 'held'),
		(SELECT COALESCE(sum(size), 0) FROM opes_quarantine WHERE status = 'held'),
		(SELECT count(*) FROM opes_outbox WHERE status = 'queued'),
		(SELECT count(*) FROM opes_outbox WHERE status = 'failed')`).Scan(&c.QuarantineHeld, &c.QuarantineBytes, &c.OutboxQueued, &c.OutboxFailed)
	return c, err
}

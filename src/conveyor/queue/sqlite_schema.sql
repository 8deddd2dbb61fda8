-- conveyor's embedded queue. One file can hold many builds; every row is keyed by build id.
-- Counters on `builds` are kept in step with `units` inside each transaction so that
-- reserve never has to count rows.

CREATE TABLE IF NOT EXISTS builds (
    build            TEXT PRIMARY KEY,
    leader           TEXT NOT NULL,
    digest           TEXT NOT NULL,
    total            INTEGER NOT NULL,
    pending          INTEGER NOT NULL,
    leased           INTEGER NOT NULL DEFAULT 0,
    done             INTEGER NOT NULL DEFAULT 0,
    requeues         INTEGER NOT NULL DEFAULT 0,  -- failed attempts sent back, build-wide
    leases_granted   INTEGER NOT NULL DEFAULT 0,  -- numbers leases in the order they are granted
    max_unit_crashes INTEGER NOT NULL,
    stop_reason      TEXT,
    created_at       REAL NOT NULL,
    finished_at      REAL
);

-- The leader's meta (JSON), apart from the counters above: every operation rewrites the
-- builds row, and SQLite writes a whole row when one column changes. With timing history the
-- meta holds each test's place in collection order, megabytes at a million tests.
CREATE TABLE IF NOT EXISTS build_meta (
    build TEXT PRIMARY KEY,
    meta  TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS units (
    build       TEXT NOT NULL,
    unit        TEXT NOT NULL,
    position    INTEGER NOT NULL,            -- order in the manifest
    state       TEXT NOT NULL,               -- pending | leased | done
    queue_order REAL NOT NULL,               -- lower is served first; requeued units go in front
    worker      TEXT,
    deadline    REAL,
    attempt     INTEGER NOT NULL DEFAULT 0,  -- times leased so far
    crashes     INTEGER NOT NULL DEFAULT 0,  -- times it took its worker down
    requeues    INTEGER NOT NULL DEFAULT 0,  -- failed attempts sent back for a retry
    claimed     INTEGER NOT NULL DEFAULT 0,  -- 1: its worker started it, so it cannot be stolen
    lease_seq   INTEGER NOT NULL DEFAULT 0,  -- when leased: its place in the grant order
    PRIMARY KEY (build, unit)
) WITHOUT ROWID;

CREATE INDEX IF NOT EXISTS units_by_state ON units (build, state, queue_order);
CREATE INDEX IF NOT EXISTS units_by_worker ON units (build, worker, state);

CREATE TABLE IF NOT EXISTS reservations (
    build   TEXT NOT NULL,
    worker  TEXT NOT NULL,
    unit    TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    ts      REAL NOT NULL
);

-- (unit, attempt) too: a steal removes single entries from the victim's order.
CREATE INDEX IF NOT EXISTS reservations_by_worker_unit ON reservations (build, worker, unit, attempt);

-- Each worker's last reservation (or steal) that leased units, under the id its caller gave it: a retry
-- with that id gets this reply again instead of leasing more.
CREATE TABLE IF NOT EXISTS reserve_requests (
    build      TEXT NOT NULL,
    worker     TEXT NOT NULL,
    request_id TEXT NOT NULL,
    reply      TEXT NOT NULL,                -- JSON: {"leases": [[unit, attempt], ...], "pending": n}
    PRIMARY KEY (build, worker)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS workers (
    build     TEXT NOT NULL,
    worker    TEXT NOT NULL,
    info      TEXT NOT NULL,
    joined_at REAL NOT NULL,
    last_seen REAL NOT NULL,
    PRIMARY KEY (build, worker)
) WITHOUT ROWID;

-- The units of a split module and their collection rank, and each worker's highest rank leased
-- in each such module: a worker goes forward through a split module (queue/forward.py).
CREATE TABLE IF NOT EXISTS forward_ranks (
    build TEXT NOT NULL,
    unit  TEXT NOT NULL,
    rank  INTEGER NOT NULL,
    PRIMARY KEY (build, unit)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS forward_marks (
    build  TEXT NOT NULL,
    worker TEXT NOT NULL,
    module TEXT NOT NULL,
    rank   INTEGER NOT NULL,
    PRIMARY KEY (build, worker, module)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS events (
    seq    INTEGER PRIMARY KEY AUTOINCREMENT,
    build  TEXT NOT NULL,
    kind   TEXT NOT NULL,
    worker TEXT,
    unit   TEXT,
    data   TEXT NOT NULL,
    ts     REAL NOT NULL
);

CREATE INDEX IF NOT EXISTS events_by_build ON events (build, seq);

-- matter-est shared ledger, schema version 1 (src/store/postgres.rs applies it under an advisory
-- lock; every rule of the Ledger trait is a constraint or a conditional update here).

-- Every issued DAC, in issue order (seq).
CREATE TABLE dacs (
    seq            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Unique serial (RFC 5280 §4.1.2.2; MATTER.md "DAC").
    serial         bytea   NOT NULL UNIQUE,
    label          text    NOT NULL,
    issuer_key     bytea   NOT NULL,
    subject        text    NOT NULL,
    subject_der    bytea   NOT NULL,
    vid            integer NOT NULL CHECK (vid BETWEEN 0 AND 65535),
    pid            integer NOT NULL CHECK (pid BETWEEN 0 AND 65535),
    requester      text    NOT NULL,
    issued_at      bigint  NOT NULL,
    der            bytea   NOT NULL,
    revoked_at     bigint,
    revoked_reason text,
    revoked_code   smallint,
    renews         bytea,
    server_keygen  boolean NOT NULL DEFAULT false,
    CHECK ((revoked_at IS NULL) = (revoked_reason IS NULL)
       AND (revoked_at IS NULL) = (revoked_code IS NULL))
);
-- certs list: by issue time, then sequence; per label the same.
CREATE INDEX dacs_by_time ON dacs (issued_at, seq);
CREATE INDEX dacs_by_label_time ON dacs (label, issued_at, seq);
-- A label's revoked DACs (its CRL).
CREATE INDEX dacs_revoked ON dacs (label, serial) WHERE revoked_at IS NOT NULL;

-- The current holder of each subject per issuer (Matter Core §6.2.2.3 via MATTER.md "DAC"): the
-- primary key is the uniqueness rule; a renewal takes the row over by a conditional update.
CREATE TABLE subjects (
    issuer_key  bytea  NOT NULL,
    subject_der bytea  NOT NULL,
    holder      bigint NOT NULL REFERENCES dacs (seq),
    PRIMARY KEY (issuer_key, subject_der)
);

-- DACs counted against each label's quota; taken by `UPDATE ... WHERE used < quota`.
CREATE TABLE labels (
    label text   PRIMARY KEY,
    used  bigint NOT NULL CHECK (used >= 0)
);

-- One-time enrollment tokens by the SHA-256 of their secret; spent by
-- `UPDATE ... WHERE spent_by IS NULL`.
CREATE TABLE tokens (
    secret_hash bytea  PRIMARY KEY CHECK (length(secret_hash) = 32),
    id          text   NOT NULL UNIQUE,
    label       text   NOT NULL,
    pid         integer CHECK (pid BETWEEN 0 AND 65535),
    created_at  bigint NOT NULL,
    spent_by    bytea,
    expires_at  bigint,
    cn          text,
    revoked_at  bigint
);

-- DACs marked for re-key.
CREATE TABLE rekey (
    serial    bytea  PRIMARY KEY REFERENCES dacs (serial),
    marked_at bigint NOT NULL,
    marked_by text   NOT NULL
);

-- The last cRLNumber taken per label (RFC 5280 §5.2.3): an upsert adds one.
CREATE TABLE crl_numbers (
    label text   PRIMARY KEY,
    last  bigint NOT NULL CHECK (last >= 1)
);

-- Each label's current CRL; replaced only by a higher number.
CREATE TABLE crls (
    label       text   PRIMARY KEY,
    number      bigint NOT NULL,
    this_update bigint NOT NULL,
    next_update bigint NOT NULL,
    entries     bigint NOT NULL,
    der         bytea  NOT NULL
);

-- The audit chain (store::audit): one sequence for every node.
CREATE TABLE audit (
    seq   bigint PRIMARY KEY CHECK (seq >= 0),
    bytes bytea  NOT NULL
);

-- The chain's head: one row, locked (SELECT ... FOR UPDATE) by every transaction that appends,
-- so that records are appended in order with no fork. `next` is the next sequence number,
-- `prev` the hash of the last record (store::audit::GENESIS before the first).
CREATE TABLE audit_head (
    id   smallint PRIMARY KEY CHECK (id = 1),
    next bigint   NOT NULL CHECK (next >= 0),
    prev bytea    NOT NULL CHECK (length(prev) = 32)
);
INSERT INTO audit_head (id, next, prev) VALUES (1, 0, decode(repeat('00', 32), 'hex'));

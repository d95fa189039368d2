-- matter-est shared ledger, schema version 2: enrollments held for manual approval (RFC 7030
-- §4.2.3; src/approval.rs). One row per label and CSR (the id); the request as JSON (the
-- store's HeldRequest) and the decision columns that keep it decided once.

CREATE TABLE held (
    id           text    PRIMARY KEY,
    label        text    NOT NULL,
    requested_at bigint  NOT NULL,
    expires_at   bigint  NOT NULL,
    -- NULL until an operator decides; set once (a conditional update WHERE approved IS NULL).
    approved     boolean,
    body         text    NOT NULL
);
CREATE INDEX held_by_time ON held (requested_at, id);

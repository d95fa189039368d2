-- matter-est shared ledger, schema version 6: `matter_est_commit_dacs`, one call for a run of
-- issuances (the writer's group), taking one array per column. It applies the same rules as
-- `matter_est_commit_dac` (0003-0005), in the same order (serial, subject, quota, token), but
-- decides every issuance first, on rows it has locked, and then writes the recorded ones with
-- one statement per table. Before, each issuance was its own call: a subtransaction (and a
-- subtransaction id: more than 64 in a group overflow every backend's snapshot), and four
-- writes each paying the statement's start and the CHECK constraints' expressions again
-- (issue 16: the largest costs left in a profile of the database).
--
-- Locks, in this order, held to the end of the transaction:
--   1. the count row of each label of the writer's group (sorted; the group's first run takes
--      them all), so that runs of one label on several nodes take their turns: the quota is
--      then counted here, under that lock;
--   2. the subjects' rows that are on record (FOR UPDATE), and the tokens' rows, in the run's
--      order. Only writers of other labels (or an operator's own transaction) can hold these,
--      and a cycle among them, which PostgreSQL detects (40P01), fails the group with 503.
-- A wait on a label's row that ends in a statement or lock timeout (another session holds it;
-- a node sets `lock_timeout` to its statement timeout, so that every wait of the call is
-- bounded, not only the first) fails that label's issuances only (`failed`, 57014 or 55P03),
-- as in schema 4. Any other error fails the
-- call and with it the writer's group: a timeout elsewhere, a deadlock, or another writer
-- recording a serial or a subject of the run at the same moment (under another label: a
-- label's runs take turns) is a serialization failure (40001), which the node answers with
-- 503 and Retry-After; the retry then finds the rule's answer on record.
--
-- `matter_est_commit_dac` stays for nodes of schema 5 still running during an upgrade; its
-- count is the same row's conditional update, under the same row lock.

CREATE FUNCTION matter_est_commit_dacs(
    p_serial         bytea[],
    p_label          text[],
    p_issuer_key     bytea[],
    p_subject        text[],
    p_subject_der    bytea[],
    p_vid            integer[],
    p_pid            integer[],
    p_requester      text[],
    p_issued_at      bigint[],
    p_der            bytea[],
    p_revoked_at     bigint[],
    p_revoked_reason text[],
    p_revoked_code   smallint[],
    p_renews         bytea[],
    p_server_keygen  boolean[],
    -- Each issuance's label quota (NULL: none); whether it is not counted against it.
    p_quota          bigint[],
    p_uncounted      boolean[],
    -- The token each issuance spends (NULL: none).
    p_token          text[],
    -- The labels of every issuance of the writer's group, which may hold several runs: the
    -- first run locks them all, in one order, so that two nodes' groups never wait on each
    -- other's labels in a cycle.
    p_group_labels   text[])
RETURNS TABLE (ord integer, outcome text, holder_dac dacs, error_state text,
               error_message text)
LANGUAGE plpgsql
-- Each statement is planned once per connection (planning it at every call cost more than
-- running it), and every look-up below is meant as an index probe per issuance. A plan made
-- while the tables are still small would otherwise scan them whole (a hash join), and keep
-- doing so as they grow: so no sequential scans, hash joins or merge joins here.
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
DECLARE
    n            integer := coalesce(array_length(p_serial, 1), 0);
    -- Per issuance: its outcome, the holder it is answered with (a seq on record, or minus
    -- the index of an issuance of this run), and a failure's SQLSTATE and text.
    outcomes     text[];
    holder_seq   bigint[];
    err_state    text[];
    err_message  text[];
    -- The run's labels (sorted), each one's count as locked, and a failed lock's error.
    labels_      text[];
    used_        bigint[];
    label_state  text[];
    label_msg    text[];
    label_ix     integer[];
    -- Per issuance: whether its serial is on record, and the first issuance of the run with
    -- the same serial; per first one, whether an issuance of the run recorded that serial.
    serial_taken boolean[];
    serial_first integer[];
    serial_used  boolean[];
    -- Per issuance: the first issuance of the run with the same subject (or token); per
    -- first one, which issuance of the run holds that subject now (0: none), and whether the
    -- token is spent in the run.
    subject_first integer[];
    claimed      integer[];
    token_first  integer[];
    token_spent  boolean[];
    -- The subject's holder on record (locked), its serial and what it renews.
    db_seq       bigint[];
    db_serial    bytea[];
    db_renews    bytea[];
    -- Per issuance that takes a subject over from a DAC on record: that DAC's seq.
    takes_from   bigint[];
    -- The token's row (locked): found, spent, revoked, expiry.
    tok_found    boolean[];
    tok_spent_by bytea[];
    tok_revoked  bigint[];
    tok_expires  bigint[];
    new_seq      bigint[];
    -- How many issuances are recorded, how many of them claim a subject with no row yet, and
    -- how many rows an insert wrote.
    recorded     integer := 0;
    new_subjects integer := 0;
    inserted     bigint;
    i            integer;
    j            integer;
    k            integer;
    l            integer;
    h_serial     bytea;
    h_renews     bytea;
    h_seq        bigint;
    u            bigint;
    r            record;
BEGIN
    IF n = 0 THEN
        RETURN;
    END IF;
    outcomes := array_fill(NULL::text, ARRAY[n]);
    holder_seq := array_fill(NULL::bigint, ARRAY[n]);
    err_state := array_fill(NULL::text, ARRAY[n]);
    err_message := array_fill(NULL::text, ARRAY[n]);
    serial_taken := array_fill(false, ARRAY[n]);
    serial_first := array_fill(0, ARRAY[n]);
    serial_used := array_fill(false, ARRAY[n]);
    label_ix := array_fill(0, ARRAY[n]);
    subject_first := array_fill(0, ARRAY[n]);
    token_first := array_fill(NULL::integer, ARRAY[n]);
    claimed := array_fill(0, ARRAY[n]);
    token_spent := array_fill(false, ARRAY[n]);
    db_seq := array_fill(NULL::bigint, ARRAY[n]);
    db_serial := array_fill(NULL::bytea, ARRAY[n]);
    db_renews := array_fill(NULL::bytea, ARRAY[n]);
    takes_from := array_fill(NULL::bigint, ARRAY[n]);
    tok_found := array_fill(false, ARRAY[n]);
    tok_spent_by := array_fill(NULL::bytea, ARRAY[n]);
    tok_revoked := array_fill(NULL::bigint, ARRAY[n]);
    tok_expires := array_fill(NULL::bigint, ARRAY[n]);
    new_seq := array_fill(NULL::bigint, ARRAY[n]);

    -- 1. The labels' count rows (this run's and the rest of the group's), in sorted order: one
    -- order on every node. A later run of the group finds its rows already held.
    SELECT array_agg(x ORDER BY x) INTO labels_
      FROM (SELECT DISTINCT x FROM unnest(p_label || p_group_labels) x) s;
    used_ := array_fill(0::bigint, ARRAY[array_length(labels_, 1)]);
    label_state := array_fill(NULL::text, ARRAY[array_length(labels_, 1)]);
    label_msg := array_fill(NULL::text, ARRAY[array_length(labels_, 1)]);
    FOR l IN 1 .. array_length(labels_, 1) LOOP
        SELECT used INTO u FROM labels WHERE label = labels_[l] FOR UPDATE SKIP LOCKED;
        IF NOT FOUND THEN
            -- No row yet (the insert makes it, and so holds it), or another session holds it
            -- (the insert, too, may wait: for a transaction that updated it). A timeout in this
            -- wait fails this label's issuances only; the exception block is the only
            -- subtransaction of the call.
            BEGIN
                INSERT INTO labels (label, used) VALUES (labels_[l], 0)
                ON CONFLICT (label) DO NOTHING;
                IF FOUND THEN
                    u := 0;
                ELSE
                    SELECT used INTO STRICT u FROM labels WHERE label = labels_[l] FOR UPDATE;
                END IF;
            EXCEPTION WHEN query_canceled OR lock_not_available THEN
                label_state[l] := SQLSTATE;
                label_msg[l] := SQLERRM;
            END;
        END IF;
        used_[l] := u;
    END LOOP;

    -- 2. In one statement, per issuance: its label's index; the first issuance of the run
    -- with the same subject (issuer, subject) and the same token; whether its serial is on
    -- record or repeated in the run (unique serial, RFC 5280 §4.1.2.2; MATTER.md "DAC"); the
    -- subject's holder on record (one holder per subject and issuer, Matter Core §6.2.2.3 via
    -- MATTER.md "DAC") and the token's row, both locked until the commit. Every look-up is
    -- an index probe per issuance (LATERAL), whatever the tables' size.
    FOR r IN
        SELECT t.o, array_position(labels_, t.lb) AS lix,
               min(t.o) OVER (PARTITION BY t.ik, t.sd) AS sf,
               CASE WHEN t.tk IS NULL THEN NULL ELSE min(t.o) OVER (PARTITION BY t.tk) END AS tf,
               min(t.o) OVER (PARTITION BY t.s) AS srf, ds.seq IS NOT NULL AS taken,
               h.seq, h.serial, h.renews,
               kt.id IS NOT NULL AS tok, kt.spent_by, kt.revoked_at, kt.expires_at
          FROM unnest(p_serial, p_label, p_issuer_key, p_subject_der, p_token)
               WITH ORDINALITY AS t(s, lb, ik, sd, tk, o)
          LEFT JOIN LATERAL (SELECT seq FROM dacs WHERE serial = t.s LIMIT 1) ds ON true
          LEFT JOIN LATERAL (SELECT d.seq, d.serial, d.renews
                               FROM subjects s JOIN dacs d ON d.seq = s.holder
                              WHERE s.issuer_key = t.ik AND s.subject_der = t.sd
                                FOR UPDATE OF s) h ON true
          LEFT JOIN LATERAL (SELECT tok.id, tok.spent_by, tok.revoked_at, tok.expires_at
                               FROM tokens tok WHERE tok.id = t.tk
                                FOR UPDATE) kt ON true
    LOOP
        label_ix[r.o] := r.lix;
        subject_first[r.o] := r.sf;
        token_first[r.o] := r.tf;
        serial_first[r.o] := r.srf;
        serial_taken[r.o] := r.taken;
        db_seq[r.o] := r.seq;
        db_serial[r.o] := r.serial;
        db_renews[r.o] := r.renews;
        tok_found[r.o] := r.tok;
        tok_spent_by[r.o] := r.spent_by;
        tok_revoked[r.o] := r.revoked_at;
        tok_expires[r.o] := r.expires_at;
    END LOOP;

    -- 3. Each issuance in order, as if alone after the ones before it.
    FOR i IN 1 .. n LOOP
        l := label_ix[i];
        IF label_state[l] IS NOT NULL THEN
            outcomes[i] := 'failed';
            err_state[i] := label_state[l];
            err_message[i] := label_msg[l];
            CONTINUE;
        END IF;
        IF serial_taken[i] OR serial_used[serial_first[i]] THEN
            outcomes[i] := 'serial';
            CONTINUE;
        END IF;
        -- The subject's holder now: an issuance earlier in the run, or the one on record.
        k := subject_first[i];
        j := claimed[k];
        IF j > 0 THEN
            h_seq := -j;
            h_serial := p_serial[j];
            h_renews := p_renews[j];
        ELSIF db_seq[i] IS NOT NULL AND takes_from[k] IS NULL THEN
            h_seq := db_seq[i];
            h_serial := db_serial[i];
            h_renews := db_renews[i];
        ELSE
            h_seq := NULL;
        END IF;
        IF h_seq IS NOT NULL THEN
            -- RFC 7030 §4.2.2 renewal: only the link to the holder it renews is exempt, and
            -- takes the subject over. Any other holder (a renewal retried after its first
            -- attempt committed finds that attempt's DAC) goes back to the caller, which
            -- applies the repeat rule (the same key asking again) or refuses; so does a holder
            -- that renews the same DAC as this one, which the repeat rule answers first.
            IF p_renews[i] IS NULL OR p_renews[i] <> h_serial
               OR h_renews IS NOT DISTINCT FROM p_renews[i] THEN
                outcomes[i] := 'held';
                holder_seq[i] := h_seq;
                CONTINUE;
            END IF;
        END IF;
        -- The label's quota, counted under its row's lock; an uncounted issuance is still
        -- refused past a full quota.
        IF p_quota[i] IS NOT NULL AND used_[l] >= p_quota[i] THEN
            outcomes[i] := 'quota';
            CONTINUE;
        END IF;
        -- A token is spent at most once.
        IF p_token[i] IS NOT NULL THEN
            IF NOT tok_found[i] THEN
                outcomes[i] := 'token unknown';
            ELSIF tok_spent_by[i] IS NOT NULL OR token_spent[token_first[i]] THEN
                outcomes[i] := 'token spent';
            ELSIF tok_revoked[i] IS NOT NULL THEN
                outcomes[i] := 'token revoked';
            ELSIF tok_expires[i] IS NOT NULL AND tok_expires[i] <= p_issued_at[i] THEN
                outcomes[i] := 'token expired';
            END IF;
            IF outcomes[i] IS NOT NULL THEN
                CONTINUE;
            END IF;
            token_spent[token_first[i]] := true;
        END IF;
        -- Recorded: it holds the subject now (taking it over from the holder on record, if
        -- that is whom it renews), and counts.
        IF h_seq IS NULL THEN
            new_subjects := new_subjects + 1;
        ELSIF h_seq > 0 THEN
            takes_from[k] := h_seq;
        END IF;
        claimed[k] := i;
        serial_used[serial_first[i]] := true;
        recorded := recorded + 1;
        IF NOT p_uncounted[i] THEN
            used_[l] := used_[l] + 1;
        END IF;
        outcomes[i] := 'recorded';
    END LOOP;

    -- 4. The writes. The DACs, in the run's order, with one statement; the seq of each.
    j := 0;
    inserted := 0;
    FOR r IN
        INSERT INTO dacs (serial, label, issuer_key, subject, subject_der, vid, pid, requester,
                          issued_at, der, revoked_at, revoked_reason, revoked_code, renews,
                          server_keygen)
        SELECT t.serial, t.label, t.issuer_key, t.subject, t.subject_der, t.vid, t.pid,
               t.requester, t.issued_at, t.der, t.revoked_at, t.revoked_reason,
               t.revoked_code, t.renews, t.server_keygen
          FROM unnest(p_serial, p_label, p_issuer_key, p_subject, p_subject_der, p_vid, p_pid,
                      p_requester, p_issued_at, p_der, p_revoked_at, p_revoked_reason,
                      p_revoked_code, p_renews, p_server_keygen)
               WITH ORDINALITY AS t(serial, label, issuer_key, subject, subject_der, vid, pid,
                                    requester, issued_at, der, revoked_at, revoked_reason,
                                    revoked_code, renews, server_keygen, o)
         WHERE outcomes[t.o] = 'recorded'
         ORDER BY t.o
        ON CONFLICT (serial) DO NOTHING
        RETURNING dacs.seq, dacs.serial
    LOOP
        j := j + 1;
        WHILE outcomes[j] <> 'recorded' LOOP
            j := j + 1;
        END LOOP;
        EXIT WHEN r.serial <> p_serial[j];
        new_seq[j] := r.seq;
        inserted := inserted + 1;
    END LOOP;
    -- A serial that another writer recorded after the look-up above (the insert waited for
    -- it): the run is retried, and then sees it.
    IF inserted <> recorded THEN
        RAISE EXCEPTION USING ERRCODE = 'serialization_failure',
            MESSAGE = 'another writer recorded a serial of this run at the same time; retry';
    END IF;

    -- Each subject's holder at the end of the run: a new row, or the renewal's takeover (the
    -- conditional update of the holder locked above).
    INSERT INTO subjects (issuer_key, subject_der, holder)
    SELECT p_issuer_key[c.first_ix], p_subject_der[c.first_ix], new_seq[c.holder_ix]
      FROM unnest(claimed) WITH ORDINALITY AS c(holder_ix, first_ix)
     WHERE c.holder_ix > 0 AND takes_from[c.first_ix] IS NULL AND db_seq[c.first_ix] IS NULL
    ON CONFLICT (issuer_key, subject_der) DO NOTHING;
    GET DIAGNOSTICS inserted = ROW_COUNT;
    -- A subject that another writer took after the look-up above (the insert waited for it):
    -- the run is retried, and then finds its holder.
    IF inserted <> new_subjects THEN
        RAISE EXCEPTION USING ERRCODE = 'serialization_failure',
            MESSAGE = 'another writer took a subject of this run at the same time; retry';
    END IF;
    FOR i IN 1 .. n LOOP
        IF claimed[i] > 0 AND takes_from[i] IS NOT NULL THEN
            UPDATE subjects SET holder = new_seq[claimed[i]]
             WHERE issuer_key = p_issuer_key[i] AND subject_der = p_subject_der[i]
               AND holder = takes_from[i];
            IF NOT FOUND THEN
                RAISE EXCEPTION 'matter_est_commit_dacs: the holder of a locked subject changed';
            END IF;
        END IF;
        -- The token spent (its row locked and checked above).
        IF outcomes[i] = 'recorded' AND p_token[i] IS NOT NULL THEN
            UPDATE tokens SET spent_by = p_serial[i] WHERE id = p_token[i] AND spent_by IS NULL;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'matter_est_commit_dacs: a locked token changed';
            END IF;
        END IF;
    END LOOP;

    -- The labels' counts (their rows locked above).
    FOR l IN 1 .. array_length(labels_, 1) LOOP
        IF label_state[l] IS NULL THEN
            UPDATE labels SET used = used_[l] WHERE label = labels_[l] AND used <> used_[l];
        END IF;
    END LOOP;

    -- 5. The answers, in the run's order; a holder by its seq.
    FOR i IN 1 .. n LOOP
        ord := i;
        outcome := outcomes[i];
        error_state := err_state[i];
        error_message := err_message[i];
        holder_dac := NULL;
        IF holder_seq[i] IS NOT NULL THEN
            SELECT * INTO STRICT holder_dac FROM dacs
             WHERE seq = CASE WHEN holder_seq[i] < 0 THEN new_seq[-holder_seq[i]]
                              ELSE holder_seq[i] END;
        END IF;
        RETURN NEXT;
    END LOOP;
END;
$$;

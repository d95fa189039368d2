-- matter-est shared ledger, schema version 5: `matter_est_commit_dac` (schema 4) counts an
-- issuance against its label with a conditional `UPDATE labels ... WHERE used < quota` first,
-- and inserts the label's row (ON CONFLICT DO NOTHING) only when there is none yet; before, every
-- call ran `INSERT ... ON CONFLICT DO UPDATE`, whose row lock, taken inside the call's
-- subtransaction, made the count row's lockers a MultiXact that each later call of the same
-- group resolved again (issue 16: the largest single cost in a profile of the database). The
-- rule is the same conditional update; the parameters, order and outcomes do not change (see
-- 0003_commit_dac.sql and 0004_commit_timeout.sql).

CREATE OR REPLACE FUNCTION matter_est_commit_dac(
    p_serial         bytea,
    p_label          text,
    p_issuer_key     bytea,
    p_subject        text,
    p_subject_der    bytea,
    p_vid            integer,
    p_pid            integer,
    p_requester      text,
    p_issued_at      bigint,
    p_der            bytea,
    p_revoked_at     bigint,
    p_revoked_reason text,
    p_revoked_code   smallint,
    p_renews         bytea,
    p_server_keygen  boolean,
    -- The label's quota (NULL: none); whether this issuance is not counted against it.
    p_quota          bigint,
    p_uncounted      boolean,
    -- The token this issuance spends (NULL: none).
    p_token          text,
    OUT outcome       text,
    OUT holder_dac    dacs,
    OUT error_state   text,
    OUT error_message text)
LANGUAGE plpgsql AS $$
DECLARE
    new_seq    bigint;
    used_now   bigint;
    token_row  record;
    violated   text;
BEGIN
    outcome := 'recorded';
    BEGIN
        -- Unique serial (RFC 5280 §4.1.2.2; MATTER.md "DAC"): the dacs.serial unique key.
        INSERT INTO dacs (serial, label, issuer_key, subject, subject_der, vid, pid, requester,
                          issued_at, der, revoked_at, revoked_reason, revoked_code, renews,
                          server_keygen)
        VALUES (p_serial, p_label, p_issuer_key, p_subject, p_subject_der, p_vid, p_pid,
                p_requester, p_issued_at, p_der, p_revoked_at, p_revoked_reason,
                p_revoked_code, p_renews, p_server_keygen)
        RETURNING seq INTO new_seq;

        -- One holder per subject and issuer (Matter Core §6.2.2.3 via MATTER.md "DAC"): the
        -- subjects primary key. A concurrent holder's transaction is waited for by the insert;
        -- its row is then seen (and locked) by the select.
        INSERT INTO subjects (issuer_key, subject_der, holder)
        VALUES (p_issuer_key, p_subject_der, new_seq)
        ON CONFLICT (issuer_key, subject_der) DO NOTHING;
        IF NOT FOUND THEN
            SELECT d.* INTO holder_dac
              FROM subjects s JOIN dacs d ON d.seq = s.holder
             WHERE s.issuer_key = p_issuer_key AND s.subject_der = p_subject_der
               FOR UPDATE OF s;
            IF NOT FOUND THEN
                outcome := 'vanished';
                RAISE EXCEPTION USING ERRCODE = 'MEREF';
            END IF;
            -- RFC 7030 §4.2.2 renewal: only the link to the holder it renews is exempt, and
            -- takes the row over. Any other holder (a renewal retried after its first attempt
            -- committed finds that attempt's DAC) goes back to the caller, which applies the
            -- repeat rule (the same key asking again) or refuses; so does a holder that renews
            -- the same DAC as this one, which the repeat rule answers before any takeover.
            IF p_renews IS NULL OR p_renews <> holder_dac.serial
               OR holder_dac.renews IS NOT DISTINCT FROM p_renews THEN
                outcome := 'held';
                RAISE EXCEPTION USING ERRCODE = 'MEREF';
            END IF;
            UPDATE subjects SET holder = new_seq
             WHERE issuer_key = p_issuer_key AND subject_der = p_subject_der
               AND holder = holder_dac.seq;
            IF NOT FOUND THEN
                outcome := 'held';
                RAISE EXCEPTION USING ERRCODE = 'MEREF';
            END IF;
        END IF;

        -- The label's quota: counted by a conditional upsert (used < quota); an uncounted
        -- issuance is still refused past a full quota.
        IF p_uncounted THEN
            IF p_quota IS NOT NULL THEN
                SELECT used INTO used_now FROM labels WHERE label = p_label;
                IF coalesce(used_now, 0) >= p_quota THEN
                    outcome := 'quota';
                    RAISE EXCEPTION USING ERRCODE = 'MEREF';
                END IF;
            END IF;
        ELSE
            -- The conditional update first: no ON CONFLICT row lock (taken inside this
            -- subtransaction it made the row's lockers a MultiXact that every later call of
            -- the group had to resolve again on the row's HOT chain).
            UPDATE labels SET used = used + 1
             WHERE label = p_label AND (p_quota IS NULL OR used < p_quota);
            IF NOT FOUND THEN
                -- The label's first issuance (no row yet), or its quota is full.
                INSERT INTO labels (label, used)
                SELECT p_label, 1 WHERE p_quota IS NULL OR p_quota > 0
                ON CONFLICT (label) DO NOTHING;
                IF NOT FOUND THEN
                    -- The row is there: full, or another node's first issuance inserted it
                    -- after this statement's snapshot (the insert waited for it to commit).
                    -- The conditional update again, on a new snapshot.
                    UPDATE labels SET used = used + 1
                     WHERE label = p_label AND (p_quota IS NULL OR used < p_quota);
                    IF NOT FOUND THEN
                        outcome := 'quota';
                        RAISE EXCEPTION USING ERRCODE = 'MEREF';
                    END IF;
                END IF;
            END IF;
        END IF;

        -- A token is spent at most once: the conditional update WHERE spent_by IS NULL.
        IF p_token IS NOT NULL THEN
            UPDATE tokens SET spent_by = p_serial
             WHERE id = p_token AND spent_by IS NULL AND revoked_at IS NULL
               AND (expires_at IS NULL OR expires_at > p_issued_at);
            IF NOT FOUND THEN
                SELECT spent_by, revoked_at INTO token_row FROM tokens WHERE id = p_token;
                IF NOT FOUND THEN
                    outcome := 'token unknown';
                ELSIF token_row.spent_by IS NOT NULL THEN
                    outcome := 'token spent';
                ELSIF token_row.revoked_at IS NOT NULL THEN
                    outcome := 'token revoked';
                ELSE
                    outcome := 'token expired';
                END IF;
                RAISE EXCEPTION USING ERRCODE = 'MEREF';
            END IF;
        END IF;
    EXCEPTION
        -- A refusal: the block's writes are undone; `outcome` says which rule.
        WHEN SQLSTATE 'MEREF' THEN
            NULL;
        WHEN unique_violation THEN
            GET STACKED DIAGNOSTICS violated = CONSTRAINT_NAME;
            IF violated = 'dacs_serial_key' THEN
                outcome := 'serial';
            ELSE
                outcome := 'failed';
                error_state := SQLSTATE;
                error_message := SQLERRM;
            END IF;
        -- A statement timeout (or a cancel) while this call waited, e.g. on a row lock that
        -- another node holds: this issuance only fails (57014, which the node answers with
        -- 503 and Retry-After); the rest of the group goes on. OTHERS never catches it.
        WHEN query_canceled THEN
            outcome := 'failed';
            error_state := SQLSTATE;
            error_message := SQLERRM;
        WHEN OTHERS THEN
            outcome := 'failed';
            error_state := SQLSTATE;
            error_message := SQLERRM;
    END;
END;
$$;

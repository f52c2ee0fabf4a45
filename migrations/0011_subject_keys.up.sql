-- Personal data (annals::personal): each subject's data key, wrapped by a
-- key-encryption key (KEK) the database never sees. Forgetting a subject
-- deletes its key and leaves the row as a tombstone (wrapped_key NULL,
-- forgotten_at set), so the key is never silently created again: every
-- value sealed with it is unreadable from then on, wherever it was copied.
CREATE TABLE annals_subject_keys (
    subject      text PRIMARY KEY CHECK (subject <> ''),
    -- the KEK that wrapped the key; rotation re-wraps the rows of older KEKs
    kek_id       text,
    wrapped_key  bytea,
    created_at   timestamptz NOT NULL DEFAULT now(),
    forgotten_at timestamptz,
    CONSTRAINT annals_subject_keys_key_or_tombstone CHECK (
        (wrapped_key IS NOT NULL AND kek_id IS NOT NULL AND forgotten_at IS NULL)
        OR (wrapped_key IS NULL AND kek_id IS NULL AND forgotten_at IS NOT NULL)
    )
);

-- rotation finds the keys still wrapped by another KEK
CREATE INDEX annals_subject_keys_kek ON annals_subject_keys (kek_id)
    WHERE wrapped_key IS NOT NULL;

-- An append sends its statements to Postgres as one pipelined batch, then
-- commits: a step that must stop the transaction cannot look at a row count
-- in Go between statements, so the version check raises an error instead.

-- +goose Up
-- +goose StatementBegin
CREATE FUNCTION expect_stream_version(p_key_id text, p_expected bigint) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce((SELECT max(stream_version) FROM events WHERE key_id = p_key_id), 0) <> p_expected THEN
        RAISE EXCEPTION 'stream % is not at version %', p_key_id, p_expected
            USING ERRCODE = 'KL409';
    END IF;
END
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION expect_stream_version(text, bigint);

ALTER TABLE annals_saga_outbox
    DROP COLUMN tracestate,
    DROP COLUMN traceparent;

-- The W3C trace context of the saga step that issued each outbox command
-- (annals' `otel` feature; NULL without it): the worker's dispatch span
-- continues that trace. Text as received; annals reads back only
-- well-formed values and ignores the rest.
ALTER TABLE annals_saga_outbox
    ADD COLUMN traceparent text,
    ADD COLUMN tracestate text;

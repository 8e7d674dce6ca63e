-- Team mode's delivery cursors (docs/team.md, "Hooks and webhooks in team mode"): the
-- last event seq each hook or webhook, by name, was delivered up to, moved by the host
-- that delivers it now (the one holding its advisory lock, src/catalogdb/lease.rs), and
-- which host that was. Never edit a released migration: add the next file.
CREATE TABLE deliveries (
    name text        PRIMARY KEY,
    seq  bigint      NOT NULL CHECK (seq >= 0),
    host text        NOT NULL,
    at   timestamptz NOT NULL DEFAULT now()
);

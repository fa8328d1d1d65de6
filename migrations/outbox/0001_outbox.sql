-- The reservation outbox: the group commit writes each batch of accepted reservations here, as one
-- value, before their answers go out; the applier moves batches into the main database in large
-- transactions and deletes them once applied (the main database's outbox_applied names the last
-- one applied, so none is applied twice). See crates/embedded/src/journal.rs.
CREATE TABLE batches (
    seq  INTEGER PRIMARY KEY,
    body BLOB NOT NULL
) STRICT;

-- An order's user is no longer checked against users by a foreign key. The check ran, for every
-- order inserted, a lookup of the buyer's users row that also locked it (FOR KEY SHARE, which
-- writes the lock into the row): in a flash sale, one such lookup and lock per reservation, a
-- tenth to a fifth of PostgreSQL's CPU per reservation (docs/BENCHMARKS.md). Nothing it guarded against can
-- happen: users are never deleted (no statement of flashmart deletes one), and every order's user
-- is the user of a signed-in session, whose id was read from users when the session began.
ALTER TABLE orders DROP CONSTRAINT orders_user_id_fkey;

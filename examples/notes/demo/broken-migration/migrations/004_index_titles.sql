-- 004: index the titles and trim them. It fails half way: the index is created, then the UPDATE
-- misspells "title" and SQLite stops with "no such column: titel". migrate.py rolls this file
-- back (the index goes too) and exits 1, but 003 stays applied: the database is changed, the
-- release cannot run, and only lockstep's pre-deploy snapshot has the notes as they were.
CREATE INDEX notes_title ON notes (title);
UPDATE notes SET title = trim(titel);

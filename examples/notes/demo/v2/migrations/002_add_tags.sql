-- 002: notes can carry tags, stored comma-separated ("work,ideas"). Existing notes get none.
ALTER TABLE notes ADD COLUMN tags TEXT NOT NULL DEFAULT '';

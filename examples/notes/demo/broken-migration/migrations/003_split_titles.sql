-- 003: the first line of each note becomes its title, the rest stays its text. This succeeds,
-- and it rewrites every row: a one-line note is left with an empty text, and nothing in the
-- database remembers what the text was before.
ALTER TABLE notes ADD COLUMN title TEXT NOT NULL DEFAULT '';
UPDATE notes SET
    title = CASE WHEN instr(text, char(10)) > 0 THEN substr(text, 1, instr(text, char(10)) - 1) ELSE text END,
    text = CASE WHEN instr(text, char(10)) > 0 THEN substr(text, instr(text, char(10)) + 1) ELSE '' END;

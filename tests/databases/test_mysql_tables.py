"""Some tables of a mariadb-dump dump (mysql_tables.py): the cut of the dump's text, the foreign
keys cut out of CREATE TABLE, and a restore of the cut against the real MariaDB on 127.0.0.1:3306."""

from __future__ import annotations

import io
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from lockstep.databases.mysql import MysqlAdapter
from lockstep.databases.mysql_tables import Selection, tables_of_dump, without_foreign_keys
from lockstep.errors import SourceError
from tests.databases.test_mysql import SERVER_URL, adapter, run_sql  # noqa: F401 (the fixture)

ORDERS = """CREATE TABLE `orders` (
  `id` int(11) NOT NULL,
  `customer_id` int(11) NOT NULL,
  `product` varchar(20) DEFAULT 'a,b) FOREIGN KEY',
  PRIMARY KEY (`id`),
  KEY `orders_customer` (`customer_id`),
  CONSTRAINT `orders_customer` FOREIGN KEY (`customer_id`) REFERENCES `customers` (`id`) ON DELETE CASCADE,
  CONSTRAINT `orders_product` FOREIGN KEY (`product`) REFERENCES `products` (`sku`),
  CONSTRAINT `orders_elsewhere` FOREIGN KEY (`id`) REFERENCES `archive`.`orders` (`id`),
  CONSTRAINT `positive` CHECK (`id` > 0)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
"""


def test_foreign_keys_to_tables_not_kept_are_cut_with_their_comma_and_named() -> None:
    sql, left_out = without_foreign_keys(ORDERS, "orders", {"orders", "products"})
    assert left_out == ["foreign key orders_customer of orders (references customers, not restored)"]
    assert "`orders_customer` FOREIGN KEY" not in sql and "KEY `orders_customer` (`customer_id`)," in sql
    assert "CONSTRAINT `orders_product` FOREIGN KEY" in sql  # to a table restored
    assert "REFERENCES `archive`.`orders`" in sql  # another database's: as a whole restore keeps it
    assert "DEFAULT 'a,b) FOREIGN KEY'," in sql and sql.endswith(
        "CHECK (`id` > 0)\n) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;\n"
    )
    last, named = without_foreign_keys(
        ORDERS.replace(",\n  CONSTRAINT `positive` CHECK (`id` > 0)", ""), "orders", {"orders"}
    )
    assert len(named) == 2 and "REFERENCES `archive`.`orders` (`id`)\n) ENGINE" in last
    assert "`orders_product`" not in last and "`orders_customer` FOREIGN" not in last


def section(title: str, *lines: str) -> str:
    return f"\n--\n-- {title}\n--\n\n" + "".join(line + "\n" for line in lines)


HEADER = "/*M!999999\\- enable the sandbox mode */ \n" + (
    "/*!40101 SET @OLD_SQL_MODE=@@SQL_MODE, SQL_MODE='NO_AUTO_VALUE_ON_ZERO' */;\n"
)
FOOTER = "/*!40101 SET SQL_MODE=@OLD_SQL_MODE */;\n\n-- Dump completed\n"
DUMP = (
    HEADER
    + section("Table structure for table `a`", "DROP TABLE IF EXISTS `a`;", "CREATE TABLE `a` (", "  `id` int", ");")
    + section(
        "Dumping data for table `a`",
        "LOCK TABLES `a` WRITE;",
        "INSERT INTO `a` VALUES (1,'" + "long " * 40 + "'),",
        "(2,'x\\n--\\n-- Table structure for table `b`\\n--');",
        "UNLOCK TABLES;",
        "DELIMITER ;;",
        "/*!50003 CREATE*/ /*!50003 TRIGGER a_t BEFORE INSERT ON a FOR EACH ROW BEGIN",
        "",
        "--",
        "-- Table structure for table `b`",
        "--",
        "",
        "SET NEW.id = NEW.id; END */;;",
        "DELIMITER ;",
    )
    + section("Table structure for table `b`", "DROP TABLE IF EXISTS `b`;", "CREATE TABLE `b` (`id` int);")
    + section("Dumping data for table `b`", "INSERT INTO `b` VALUES (7);", "/*!40101 SET SQL_MODE=@OLD_SQL_MODE */;")
    + section("Dumping routines for database 'shop'", "DELIMITER ;;", "CREATE PROCEDURE p() SELECT 1 ;;", "DELIMITER ;")
    + FOOTER
)


@pytest.mark.parametrize("piece_bytes", [7, 1 << 20])
def test_the_cut_keeps_header_chosen_sections_with_their_triggers_and_footer(piece_bytes: int) -> None:
    """A trigger body holding a section's comment block does not open a section; a value
    written as one line with \\n does not either; long lines read in pieces come through whole;
    a footer-shaped line inside a section left out is not taken for the footer. The cut stops
    at the first section after the chosen ones, with the footer the header's SETs call for."""
    chosen = Selection({"a"})
    cut = b"".join(tables_of_dump(io.BytesIO(DUMP.encode()), chosen, piece_bytes=piece_bytes)).decode()
    assert cut.startswith(HEADER) and cut.endswith("DELIMITER ;\n\n/*!40101 SET SQL_MODE=@OLD_SQL_MODE */;\n")
    assert "TRIGGER a_t" in cut and "long " * 40 in cut and "`b`\\n--');" in cut
    assert "INSERT INTO `b`" not in cut and "CREATE TABLE `b`" not in cut and "PROCEDURE" not in cut
    assert cut.count("SET SQL_MODE=@OLD_SQL_MODE") == 1
    other = Selection({"b"})
    cut_b = b"".join(tables_of_dump(io.BytesIO(DUMP.encode()), other, piece_bytes=piece_bytes)).decode()
    assert "CREATE TABLE `b`" in cut_b and "INSERT INTO `b`" in cut_b and "`a`" not in cut_b
    set_back = "/*!40101 SET SQL_MODE=@OLD_SQL_MODE */;\n"
    assert "TRIGGER a_t" not in cut_b and cut_b.endswith(f"(7);\n{set_back}\n{set_back}")
    assert "PROCEDURE" not in cut_b


def test_a_dump_without_sections_after_the_chosen_ones_keeps_its_own_footer() -> None:
    """When no section follows the chosen tables' (here the dump ends after b), the dump's own
    footer is kept, and the header's SETs are not set back twice."""
    dump = DUMP[: DUMP.index("\n--\n-- Dumping routines")] + "\n" + FOOTER
    cut = b"".join(tables_of_dump(io.BytesIO(dump.encode()), Selection({"b"}))).decode()
    assert cut.endswith(FOOTER) and cut.count("SET SQL_MODE=@OLD_SQL_MODE") == 2  # b's data holds one


def test_a_table_the_dump_lacks_fails_before_the_end_of_the_dump() -> None:
    pieces = tables_of_dump(io.BytesIO(DUMP.encode()), Selection({"a", "c"}))
    with pytest.raises(SourceError, match="no table definition for c"):
        for piece in pieces:
            assert FOOTER.encode() not in piece


@pytest.fixture
def source(adapter: MysqlAdapter) -> Iterator[str]:  # noqa: F811
    name = f"mytables_{uuid.uuid4().hex[:10]}"
    run_sql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    try:
        yield name
    finally:
        run_sql(f"DROP DATABASE IF EXISTS `{name}`")


def test_a_trigger_whose_body_holds_a_section_comment_restores_only_its_table(
    adapter: MysqlAdapter,  # noqa: F811
    source: str,
) -> None:
    """Real mariadb-dump output: a trigger body with a comment block naming another table, and
    a value with a newline before "-- Dumping data for table": the cut restores `a` alone, its
    rows, its trigger, and none of `b`."""
    statements = (
        "CREATE TABLE a (id INT PRIMARY KEY, note TEXT);\n"
        "CREATE TABLE b (id INT PRIMARY KEY);\n"
        "INSERT INTO a VALUES (1, CONCAT('x', CHAR(10), '-- Dumping data for table `b`', CHAR(10), 'y'));\n"
        "INSERT INTO b VALUES (5);\n"
        "DELIMITER ;;\n"
        "CREATE TRIGGER a_t BEFORE INSERT ON a FOR EACH ROW BEGIN\n\n--\n-- Table structure for table `b`\n--\n\n"
        "SET NEW.note = COALESCE(NEW.note, 'none'); END;;\n"
        "DELIMITER ;\n"
    )
    # --comments: the client would otherwise take the comment out of the trigger's body.
    subprocess.run(
        ["mariadb", "--host=127.0.0.1", "--port=3306", "--user=root", "--comments", source],
        input=statements.encode(),
        env={"MYSQL_PWD": "", "PATH": "/usr/bin:/bin"},
        check=True,
    )
    dump = subprocess.run(
        ["mariadb-dump", "--host=127.0.0.1", "--port=3306", "--user=root", "--triggers", "--routines", source],
        capture_output=True,
        env={"MYSQL_PWD": "", "PATH": "/usr/bin:/bin"},
        check=True,
    ).stdout
    assert dump.count(b"\n-- Table structure for table `b`\n") == 2  # the real one and the trigger's
    target = f"mytables_{uuid.uuid4().hex[:10]}"
    url = SERVER_URL.rsplit("/", 1)[0] + "/" + target
    try:
        restored = adapter.restore_tables(url, None, io.BytesIO(dump), True, ["a"])
        assert restored.left_out == []
        tables = run_sql(f"SELECT table_name FROM information_schema.tables WHERE table_schema = '{target}'")
        assert tables == [["a"]]
        assert run_sql("SELECT id, HEX(note) FROM a", database=target) == run_sql(
            "SELECT id, HEX(note) FROM a", database=source
        )
        run_sql("INSERT INTO a (id) VALUES (2)", database=target)
        assert run_sql("SELECT note FROM a WHERE id = 2", database=target) == [["none"]]
    finally:
        run_sql(f"DROP DATABASE IF EXISTS `{target}`")


def test_the_sandbox_line_is_no_statement_so_a_section_right_after_it_opens() -> None:
    """MariaDB's newer clients start a dump with a client command that has no ";" at its end."""
    dump = "/*M!999999\\- enable the sandbox mode */ \n" + section(
        "Table structure for table `a`", "CREATE TABLE `a` (`id` int);"
    )
    cut = b"".join(tables_of_dump(io.BytesIO(dump.encode()), Selection({"a"}))).decode()
    assert cut == dump


@pytest.mark.parametrize("tool", ["mariadb-dump", "mysqldump"])
def test_the_cut_stops_reading_the_dump_after_the_chosen_tables(
    adapter: MysqlAdapter,  # noqa: F811
    source: str,
    tool: str,
) -> None:
    """Real dumps (by mariadb-dump, and by mysqldump, here a link to it): --table a reads the
    dump only up to b's section, and the cut, footer and all, restores a with its trigger; the
    footer sets back every variable the header saved, as the dump's own does."""
    run_sql(
        "CREATE TABLE a (id INT AUTO_INCREMENT PRIMARY KEY, note TEXT);"
        "CREATE TABLE b (id INT PRIMARY KEY, filler TEXT);"
        "CREATE TRIGGER a_t BEFORE INSERT ON a FOR EACH ROW SET NEW.note = COALESCE(NEW.note, 'none');"
        "INSERT INTO a (note) VALUES ('one'); ALTER TABLE a AUTO_INCREMENT = 9;"
        "INSERT INTO b SELECT seq, REPEAT('x', 1000) FROM seq_1_to_2000;",
        database=source,
    )
    dump = subprocess.run(
        [tool, "--host=127.0.0.1", "--port=3306", "--user=root", "--triggers", "--routines", "--events", source],
        capture_output=True,
        env={"MYSQL_PWD": "", "PATH": "/usr/bin:/bin"},
        check=True,
    ).stdout
    stream = io.BytesIO(dump)
    cut = b"".join(tables_of_dump(stream, Selection({"a"})))
    assert stream.tell() < dump.index(b"INSERT INTO `b`") < len(dump)
    own_footer = [line for line in dump.splitlines() if b"=@OLD_" in line and b"SET @OLD_" not in line]
    assert sorted(cut.splitlines()[-len(own_footer) :]) == sorted(own_footer)
    target = f"mytables_{uuid.uuid4().hex[:10]}"
    url = SERVER_URL.rsplit("/", 1)[0] + "/" + target
    try:
        adapter.restore_tables(url, None, io.BytesIO(dump), True, ["a"])
        run_sql("INSERT INTO a (note) VALUES (NULL)", database=target)
        assert run_sql("SELECT id, note FROM a ORDER BY id", database=target) == [["1", "one"], ["9", "none"]]
    finally:
        run_sql(f"DROP DATABASE IF EXISTS `{target}`")

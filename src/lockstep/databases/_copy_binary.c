/*
 * COPY text rows, as pg_dump writes them, turned into PostgreSQL's binary COPY format.
 *
 * Why: a restore is bound by the server's CPU, and reading COPY text is much of it. Loading the
 * shop database's `events` table (3.2M rows) from COPY text took the server 6.4 s, from the same
 * rows in binary form 3.2 s: in binary the server neither splits and de-escapes lines nor runs
 * each column's text parser (timestamptz_in alone was 1.4 s). Doing that work here, with parsers
 * for the few exact shapes pg_dump's output can take, costs the client a fraction of it.
 *
 * Only the types below, and only the shapes their output functions produce under pg_dump's
 * session settings (DateStyle ISO, no extra text), are understood; anything else is an error,
 * never a guess. The restore's row check compares every restored row with the manifest.
 *
 * Python API (see _copy_binary.pyi and copy_binary.py):
 *     convert(text, kinds) -> (binary rows, row count)
 * `kinds` holds one byte per column (the KIND_* letters below). The output is the rows only:
 * the caller writes the format's header before the first and its trailer after the last.
 * A row it cannot read raises ValueError(row number within `text`, counted from 1, reason): the
 * caller, which sends a table in pieces, knows which row of the table that is.
 * The GIL is released while converting.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define KIND_INT2 'h'
#define KIND_INT4 'i'
#define KIND_INT8 'l'
#define KIND_TEXT 't'  /* text, varchar, bpchar, json: the value's bytes */
#define KIND_JSONB 'j' /* jsonb: a version byte (1), then the text */
#define KIND_BOOL 'b'
#define KIND_TIMESTAMPTZ 'T'
#define KIND_TIMESTAMP 'S'
#define KIND_DATE 'd'
#define KIND_NUMERIC 'n'
#define KIND_UUID 'u'

/* PostgreSQL's constants (datatype/timestamp.h, utils/numeric.c). */
#define POSTGRES_EPOCH_JDATE 2451545
#define USECS_PER_DAY INT64_C(86400000000)
#define USECS_PER_SEC INT64_C(1000000)
#define NUMERIC_POS 0x0000
#define NUMERIC_NEG 0x4000
#define NUMERIC_NAN 0xC000
#define NUMERIC_PINF 0xD000
#define NUMERIC_NINF 0xF000

typedef struct {
    unsigned char *data;
    size_t size;
    size_t capacity;
    int failed; /* out of memory */
} Output;

typedef struct {
    const unsigned char *start; /* the field's raw text, escapes and all */
    size_t length;
} Field;

typedef struct {
    char message[200];
} Error;

static int reserve(Output *output, size_t more) {
    if (output->size + more <= output->capacity) {
        return 1;
    }
    size_t capacity = output->capacity ? output->capacity : 1 << 16;
    while (capacity < output->size + more) {
        capacity *= 2;
    }
    unsigned char *grown = realloc(output->data, capacity);
    if (grown == NULL) {
        output->failed = 1;
        return 0;
    }
    output->data = grown;
    output->capacity = capacity;
    return 1;
}

static void put16(Output *output, uint16_t value) {
    output->data[output->size++] = (unsigned char)(value >> 8);
    output->data[output->size++] = (unsigned char)value;
}

static void put32(Output *output, uint32_t value) {
    for (int shift = 24; shift >= 0; shift -= 8) {
        output->data[output->size++] = (unsigned char)(value >> shift);
    }
}

static void put64(Output *output, uint64_t value) {
    for (int shift = 56; shift >= 0; shift -= 8) {
        output->data[output->size++] = (unsigned char)(value >> shift);
    }
}

/* Says what the value is not, never the value itself: a row's data may be anybody's. */
static int fail(Error *error, const char *what, const Field *field) {
    snprintf(error->message, sizeof error->message, "%s (a value of %zu bytes)", what, field->length);
    return 0;
}

static int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

/* A run of digits at text[*at], at least `minimum` and at most `maximum` of them. */
static int digits(const unsigned char *text, size_t length, size_t *at, int minimum, int maximum, int64_t *value) {
    int count = 0;
    int64_t result = 0;
    while (*at < length && is_digit(text[*at]) && count < maximum) {
        result = result * 10 + (text[*at] - '0');
        (*at)++;
        count++;
    }
    *value = result;
    return count >= minimum;
}

static int expect(const unsigned char *text, size_t length, size_t *at, char c) {
    if (*at < length && text[*at] == (unsigned char)c) {
        (*at)++;
        return 1;
    }
    return 0;
}

static int equals(const Field *field, const char *word) {
    size_t length = strlen(word);
    return field->length == length && memcmp(field->start, word, length) == 0;
}

/* PostgreSQL's date2j (utils/adt/datetime.c): the Julian day of a proleptic Gregorian date,
 * the year astronomical (1 BC is 0). */
static int64_t date2j(int64_t year, int64_t month, int64_t day) {
    if (month > 2) {
        month += 1;
        year += 4800;
    } else {
        month += 13;
        year += 4799;
    }
    int64_t century = year / 100;
    int64_t julian = year * 365 - 32167;
    julian += year / 4 - century + century / 4;
    julian += 7834 * month / 256 + day;
    return julian;
}

static int integer(const Field *field, int64_t low, int64_t high, int64_t *value, Error *error) {
    const unsigned char *text = field->start;
    size_t at = 0;
    int negative = 0;
    if (at < field->length && text[at] == '-') {
        negative = 1;
        at++;
    }
    if (at == field->length || field->length - at > 19) {
        return fail(error, "not an integer", field);
    }
    uint64_t magnitude = 0;
    for (; at < field->length; at++) {
        if (!is_digit(text[at])) {
            return fail(error, "not an integer", field);
        }
        magnitude = magnitude * 10 + (uint64_t)(text[at] - '0');
    }
    /* 19 digits fit in uint64; the bounds below are at most 2^63 in magnitude. */
    if (negative ? magnitude > (uint64_t)(-(low + 1)) + 1 : magnitude > (uint64_t)high) {
        return fail(error, "integer out of range", field);
    }
    *value = negative ? (int64_t)(0 - magnitude) : (int64_t)magnitude;
    return 1;
}

/* "YYYY-MM-DD" with an optional " BC" after whatever follows (the caller says where the date
 * part ends); the Julian day relative to 2000-01-01. */
static int parse_date_part(const unsigned char *text, size_t length, size_t *at, int64_t *year, int64_t *month,
                           int64_t *day) {
    return digits(text, length, at, 4, 9, year) && expect(text, length, at, '-') &&
           digits(text, length, at, 2, 2, month) && expect(text, length, at, '-') &&
           digits(text, length, at, 2, 2, day) && *month >= 1 && *month <= 12 && *day >= 1 && *day <= 31;
}

static int ends_bc(const Field *field, size_t *length) {
    if (field->length >= 3 && memcmp(field->start + field->length - 3, " BC", 3) == 0) {
        *length = field->length - 3;
        return 1;
    }
    *length = field->length;
    return 0;
}

static int date_value(const Field *field, int32_t *value, Error *error) {
    if (equals(field, "infinity")) {
        *value = INT32_MAX;
        return 1;
    }
    if (equals(field, "-infinity")) {
        *value = INT32_MIN;
        return 1;
    }
    size_t length, at = 0;
    int bc = ends_bc(field, &length);
    int64_t year, month, day;
    if (!parse_date_part(field->start, length, &at, &year, &month, &day) || at != length) {
        return fail(error, "not a date", field);
    }
    if (bc) {
        year = 1 - year;
    }
    int64_t days = date2j(year, month, day) - POSTGRES_EPOCH_JDATE;
    if (days <= INT32_MIN || days >= INT32_MAX) {
        return fail(error, "date out of range", field);
    }
    *value = (int32_t)days;
    return 1;
}

/* timestamp and timestamptz as EncodeDateTime writes them in ISO style:
 * "YYYY-MM-DD HH:MM:SS[.ffffff][+HH[:MM[:SS]]][ BC]", or infinity / -infinity. */
static int timestamp_value(const Field *field, int with_zone, int64_t *value, Error *error) {
    if (equals(field, "infinity")) {
        *value = INT64_MAX;
        return 1;
    }
    if (equals(field, "-infinity")) {
        *value = INT64_MIN;
        return 1;
    }
    const unsigned char *text = field->start;
    size_t length, at = 0;
    int bc = ends_bc(field, &length);
    int64_t year, month, day, hour, minute, second, fraction = 0;
    if (!parse_date_part(text, length, &at, &year, &month, &day) || !expect(text, length, &at, ' ') ||
        !digits(text, length, &at, 2, 2, &hour) || !expect(text, length, &at, ':') ||
        !digits(text, length, &at, 2, 2, &minute) || !expect(text, length, &at, ':') ||
        !digits(text, length, &at, 2, 2, &second) || hour > 24 || minute > 59 || second > 60) {
        return fail(error, with_zone ? "not a timestamptz" : "not a timestamp", field);
    }
    if (expect(text, length, &at, '.')) {
        size_t begin = at;
        if (!digits(text, length, &at, 1, 6, &fraction)) {
            return fail(error, "not a timestamp's fraction of a second", field);
        }
        for (size_t scale = at - begin; scale < 6; scale++) {
            fraction *= 10;
        }
    }
    int64_t offset = 0; /* seconds east of UTC */
    if (with_zone) {
        int sign;
        if (expect(text, length, &at, '+')) {
            sign = 1;
        } else if (expect(text, length, &at, '-')) {
            sign = -1;
        } else {
            return fail(error, "a timestamptz without its offset", field);
        }
        int64_t zone_hours, zone_minutes = 0, zone_seconds = 0;
        if (!digits(text, length, &at, 2, 2, &zone_hours) ||
            (expect(text, length, &at, ':') &&
             (!digits(text, length, &at, 2, 2, &zone_minutes) ||
              (expect(text, length, &at, ':') && !digits(text, length, &at, 2, 2, &zone_seconds))))) {
            return fail(error, "not a timestamptz's offset", field);
        }
        offset = sign * ((zone_hours * 60 + zone_minutes) * 60 + zone_seconds);
    }
    if (at != length) {
        return fail(error, with_zone ? "not a timestamptz" : "not a timestamp", field);
    }
    if (bc) {
        year = 1 - year;
    }
    if (year > 300000 || year < -5000) {
        return fail(error, "timestamp out of range", field);
    }
    int64_t days = date2j(year, month, day) - POSTGRES_EPOCH_JDATE;
    int64_t time = ((hour * 60 + minute) * 60 + second) * USECS_PER_SEC + fraction;
    *value = days * USECS_PER_DAY + time - offset * USECS_PER_SEC;
    return 1;
}

static int hex_digit(unsigned char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int uuid_value(const Field *field, unsigned char bytes[16], Error *error) {
    if (field->length != 36) {
        return fail(error, "not a uuid", field);
    }
    int count = 0;
    for (size_t at = 0; at < 36;) {
        if (at == 8 || at == 13 || at == 18 || at == 23) {
            if (field->start[at] != '-') {
                return fail(error, "not a uuid", field);
            }
            at++;
            continue;
        }
        int high = hex_digit(field->start[at]), low = hex_digit(field->start[at + 1]);
        if (high < 0 || low < 0) {
            return fail(error, "not a uuid", field);
        }
        bytes[count++] = (unsigned char)(high << 4 | low);
        at += 2;
    }
    return 1;
}

/* numeric as numeric_out writes it: [-]digits[.digits], NaN, Infinity or -Infinity; written as
 * numeric_send would: base-10000 digits, the weight of the first, the sign, the display scale. */
static int numeric_value(const Field *field, Output *output, Error *error) {
    uint16_t special = 0;
    if (equals(field, "NaN")) {
        special = NUMERIC_NAN;
    } else if (equals(field, "Infinity")) {
        special = NUMERIC_PINF;
    } else if (equals(field, "-Infinity")) {
        special = NUMERIC_NINF;
    }
    if (special) {
        put32(output, 8);
        put16(output, 0);
        put16(output, 0);
        put16(output, special);
        put16(output, 0);
        return 1;
    }
    const unsigned char *text = field->start;
    size_t at = 0, length = field->length;
    int negative = expect(text, length, &at, '-');
    size_t integer_start = at;
    while (at < length && is_digit(text[at])) at++;
    size_t integer_digits = at - integer_start;
    size_t fraction_start = at, fraction_digits = 0;
    if (expect(text, length, &at, '.')) {
        fraction_start = at;
        while (at < length && is_digit(text[at])) at++;
        fraction_digits = at - fraction_start;
        if (fraction_digits == 0) {
            return fail(error, "not a numeric", field);
        }
    }
    if (integer_digits == 0 || at != length || fraction_digits > 0x3FFF) {
        return fail(error, "not a numeric", field);
    }
    /* Groups of four decimal digits: the integer part's aligned at the decimal point from the
     * right, the fraction's from the left, padded with zeros. */
    size_t integer_groups = (integer_digits + 3) / 4, fraction_groups = (fraction_digits + 3) / 4;
    size_t total = integer_groups + fraction_groups;
    if (total > 0xFFFF) {
        return fail(error, "numeric too long", field);
    }
    /* On the stack for any numeric of up to 128 digits: a malloc per value would contend for
     * the heap's lock with the other loader thread (lockstep runs with one glibc arena). */
    uint16_t local[32];
    uint16_t *groups = total <= 32 ? local : malloc(total * sizeof *groups);
    if (groups == NULL) {
        output->failed = 1;
        return 0;
    }
    size_t lead = integer_groups * 4 - integer_digits; /* zeros before the first integer digit */
    for (size_t group = 0; group < integer_groups; group++) {
        unsigned value = 0;
        for (size_t place = 0; place < 4; place++) {
            size_t position = group * 4 + place; /* in the zero-padded integer part */
            value = value * 10 + (position < lead ? 0 : (unsigned)(text[integer_start + position - lead] - '0'));
        }
        groups[group] = (uint16_t)value;
    }
    for (size_t group = 0; group < fraction_groups; group++) {
        unsigned value = 0;
        for (size_t place = 0; place < 4; place++) {
            size_t position = group * 4 + place;
            value = value * 10 + (position < fraction_digits ? (unsigned)(text[fraction_start + position] - '0') : 0);
        }
        groups[integer_groups + group] = (uint16_t)value;
    }
    size_t first = 0, last = total; /* strip zero groups at both ends, as make_result does */
    while (first < last && groups[first] == 0) first++;
    while (last > first && groups[last - 1] == 0) last--;
    int64_t weight = (int64_t)integer_groups - 1 - (int64_t)first;
    size_t count = last - first;
    if (count == 0) {
        weight = 0;
        negative = 0;
    }
    if (weight > INT16_MAX || weight < INT16_MIN) {
        if (groups != local) free(groups);
        return fail(error, "numeric out of range", field);
    }
    if (!reserve(output, 12 + 2 * count)) {
        if (groups != local) free(groups);
        return 0;
    }
    put32(output, (uint32_t)(8 + 2 * count));
    put16(output, (uint16_t)count);
    put16(output, (uint16_t)(int16_t)weight);
    put16(output, negative ? NUMERIC_NEG : NUMERIC_POS);
    put16(output, (uint16_t)fraction_digits);
    for (size_t group = first; group < last; group++) {
        put16(output, groups[group]);
    }
    if (groups != local) free(groups);
    return 1;
}

/* A text field's value, de-escaped as COPY FROM does (CopyReadAttributesText): \b \f \n \r \t
 * \v, up to three octal digits, \x and up to two hex digits, and any other character taken as
 * itself. The length word is filled in afterwards. */
static int text_value(const Field *field, Output *output, int jsonb) {
    if (!reserve(output, 5 + field->length)) {
        return 0;
    }
    size_t length_at = output->size;
    output->size += 4;
    if (jsonb) {
        output->data[output->size++] = 1;
    }
    const unsigned char *text = field->start, *end = field->start + field->length;
    const unsigned char *backslash = memchr(text, '\\', field->length);
    if (backslash == NULL) {
        memcpy(output->data + output->size, text, field->length);
        output->size += field->length;
    } else {
        while (text < end) {
            unsigned char c = *text++;
            if (c == '\\' && text < end) {
                c = *text++;
                if (c >= '0' && c <= '7') {
                    int value = c - '0';
                    for (int more = 0; more < 2 && text < end && *text >= '0' && *text <= '7'; more++) {
                        value = (value << 3) + (*text++ - '0');
                    }
                    c = (unsigned char)(value & 0xFF);
                } else if (c == 'x' && text < end && hex_digit(*text) >= 0) {
                    int value = hex_digit(*text++);
                    if (text < end && hex_digit(*text) >= 0) {
                        value = (value << 4) + hex_digit(*text++);
                    }
                    c = (unsigned char)value;
                } else if (c == 'b') {
                    c = '\b';
                } else if (c == 'f') {
                    c = '\f';
                } else if (c == 'n') {
                    c = '\n';
                } else if (c == 'r') {
                    c = '\r';
                } else if (c == 't') {
                    c = '\t';
                } else if (c == 'v') {
                    c = '\v';
                }
            } else if (c == '\\') {
                return -1; /* "\<tab>" or "\<newline>": COPY FROM reads them as data, pg_dump writes neither */
            }
            output->data[output->size++] = c;
        }
    }
    uint32_t written = (uint32_t)(output->size - length_at - 4);
    output->data[length_at] = (unsigned char)(written >> 24);
    output->data[length_at + 1] = (unsigned char)(written >> 16);
    output->data[length_at + 2] = (unsigned char)(written >> 8);
    output->data[length_at + 3] = (unsigned char)written;
    return 1;
}

static int convert_field(const Field *field, char kind, Output *output, Error *error) {
    if (field->length == 2 && field->start[0] == '\\' && field->start[1] == 'N') {
        if (!reserve(output, 4)) return 0;
        put32(output, 0xFFFFFFFFu);
        return 1;
    }
    if (kind == KIND_TEXT || kind == KIND_JSONB) {
        int done = text_value(field, output, kind == KIND_JSONB);
        return done < 0 ? fail(error, "a backslash before the end of a field (pg_dump writes none)", field) : done;
    }
    if (memchr(field->start, '\\', field->length) != NULL) {
        return fail(error, "an escape where pg_dump writes none", field);
    }
    if (!reserve(output, 24)) return 0;
    int64_t number;
    switch (kind) {
    case KIND_INT2:
        if (!integer(field, INT16_MIN, INT16_MAX, &number, error)) return 0;
        put32(output, 2);
        put16(output, (uint16_t)(int16_t)number);
        return 1;
    case KIND_INT4:
        if (!integer(field, INT32_MIN, INT32_MAX, &number, error)) return 0;
        put32(output, 4);
        put32(output, (uint32_t)(int32_t)number);
        return 1;
    case KIND_INT8:
        if (!integer(field, INT64_MIN, INT64_MAX, &number, error)) return 0;
        put32(output, 8);
        put64(output, (uint64_t)number);
        return 1;
    case KIND_BOOL:
        if (equals(field, "t") || equals(field, "f")) {
            put32(output, 1);
            output->data[output->size++] = field->start[0] == 't';
            return 1;
        }
        return fail(error, "not a boolean", field);
    case KIND_TIMESTAMPTZ:
    case KIND_TIMESTAMP:
        if (!timestamp_value(field, kind == KIND_TIMESTAMPTZ, &number, error)) return 0;
        put32(output, 8);
        put64(output, (uint64_t)number);
        return 1;
    case KIND_DATE: {
        int32_t days;
        if (!date_value(field, &days, error)) return 0;
        put32(output, 4);
        put32(output, (uint32_t)days);
        return 1;
    }
    case KIND_UUID: {
        unsigned char bytes[16];
        if (!uuid_value(field, bytes, error)) return 0;
        put32(output, 16);
        memcpy(output->data + output->size, bytes, 16);
        output->size += 16;
        return 1;
    }
    case KIND_NUMERIC:
        return numeric_value(field, output, error);
    default:
        snprintf(error->message, sizeof error->message, "unknown column kind '%c'", kind);
        return 0;
    }
}

/* Every row of `text` (the last may lack its newline); on failure *rows is the failed row's
 * index and the message says why. */
static int convert_rows(const unsigned char *text, size_t length, const char *kinds, size_t columns, Output *output,
                        Py_ssize_t *rows, Error *error) {
    size_t at = 0;
    *rows = 0;
    while (at < length) {
        const unsigned char *row = text + at;
        const unsigned char *newline = memchr(row, '\n', length - at);
        size_t row_length = newline ? (size_t)(newline - row) : length - at;
        if (!reserve(output, 2)) return 0;
        put16(output, (uint16_t)columns);
        size_t position = 0;
        for (size_t column = 0; column < columns; column++) {
            const unsigned char *start = row + position;
            const unsigned char *tab = memchr(start, '\t', row_length - position);
            size_t field_length = tab ? (size_t)(tab - start) : row_length - position;
            if ((tab == NULL) != (column == columns - 1)) {
                snprintf(error->message, sizeof error->message, "the row has %s columns than its table's %zu",
                         tab == NULL ? "fewer" : "more", columns);
                return 0;
            }
            Field field = {start, field_length};
            if (!convert_field(&field, kinds[column], output, error)) {
                if (!output->failed) {
                    char detail[sizeof error->message];
                    memcpy(detail, error->message, sizeof detail);
                    snprintf(error->message, sizeof error->message, "column %zu: %.150s", column + 1, detail);
                }
                return 0;
            }
            position += field_length + 1;
        }
        if (memchr(row, '\r', row_length) != NULL) {
            snprintf(error->message, sizeof error->message, "a literal carriage return in the row");
            return 0;
        }
        at += row_length + (newline ? 1 : 0);
        (*rows)++;
    }
    return 1;
}

PyDoc_STRVAR(convert_doc, "convert(text, kinds) -> (binary rows, row count)\n\n"
                          "Whole rows of COPY text in PostgreSQL's binary COPY format (without the\n"
                          "header and trailer). A row it cannot read raises ValueError(row number\n"
                          "within text, reason naming the column but never the value).");

static PyObject *convert(PyObject *module, PyObject *args) {
    Py_buffer text, kinds;
    if (!PyArg_ParseTuple(args, "y*y*", &text, &kinds)) {
        return NULL;
    }
    if (kinds.len < 1 || kinds.len > 1600) {
        PyBuffer_Release(&text);
        PyBuffer_Release(&kinds);
        PyErr_SetString(PyExc_ValueError, "convert: a table has 1 to 1600 columns");
        return NULL;
    }
    Output output = {NULL, 0, 0, 0};
    Error error = {{0}};
    Py_ssize_t rows = 0;
    int ok;
    Py_BEGIN_ALLOW_THREADS
    ok = reserve(&output, (size_t)text.len + (size_t)text.len / 4 + 64) &&
         convert_rows(text.buf, (size_t)text.len, kinds.buf, (size_t)kinds.len, &output, &rows, &error);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&text);
    PyBuffer_Release(&kinds);
    if (!ok) {
        free(output.data);
        if (output.failed) {
            return PyErr_NoMemory();
        }
        PyObject *arguments = Py_BuildValue("(ns)", rows + 1, error.message);
        if (arguments != NULL) {
            PyErr_SetObject(PyExc_ValueError, arguments);
            Py_DECREF(arguments);
        }
        return NULL;
    }
    PyObject *result = PyBytes_FromStringAndSize((const char *)output.data, (Py_ssize_t)output.size);
    free(output.data);
    if (result == NULL) {
        return NULL;
    }
    return Py_BuildValue("(Nn)", result, rows);
}

static PyMethodDef copy_binary_methods[] = {
    {"convert", convert, METH_VARARGS, convert_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef copy_binary_module = {
    PyModuleDef_HEAD_INIT,
    "_copy_binary",
    "COPY text rows in PostgreSQL's binary COPY format (see copy_binary.py).",
    -1,
    copy_binary_methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC PyInit__copy_binary(void) { return PyModule_Create(&copy_binary_module); }

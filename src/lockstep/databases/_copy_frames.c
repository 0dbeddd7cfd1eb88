/*
 * The COPY text inside a pg_dump custom-format data block, without the archive's framing.
 *
 * Why: an uncompressed custom-format dump stores a table's data as a run of frames, each a
 * length (pg_dump's integer: a sign byte, then `int_size` little-endian bytes) and that many
 * bytes of COPY text, ended by a frame of length 0. pg_dump writes one frame per row, so the
 * shop database's 1 GB dump holds 4.6 million of them. A Python loop over them takes about 5 s;
 * running pg_restore to strip them cost about 1 CPU-second plus two trips of the whole dump
 * through pipes. This loop is a memcpy per row.
 *
 * Python API (see _copy_frames.pyi; copy_frames.py has the same function in Python):
 *     unframe(data, position, int_size, remaining) -> (text, position, remaining, ended)
 * The GIL is released while copying.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

PyDoc_STRVAR(unframe_doc,
             "unframe(data, position, int_size, remaining) -> (text, position, remaining, ended)\n\n"
             "The frames' bytes from data[position:] joined, up to the end of data or the frame of\n"
             "length 0 that ends the block. See copy_frames.unframe_in_python.");

static PyObject *unframe(PyObject *module, PyObject *args) {
    Py_buffer view;
    Py_ssize_t position, int_size, remaining;
    if (!PyArg_ParseTuple(args, "y*nnn", &view, &position, &int_size, &remaining)) {
        return NULL;
    }
    const unsigned char *data = view.buf;
    Py_ssize_t size = view.len;
    if (int_size < 1 || int_size > 8 || position < 0 || position > size || remaining < 0) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "unframe: position, int_size or remaining out of range");
        return NULL;
    }
    PyObject *text = PyBytes_FromStringAndSize(NULL, size - position);
    if (text == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    char *output = PyBytes_AS_STRING(text);
    Py_ssize_t written = 0;
    int ended = 0;
    int bad_frame = 0;

    Py_BEGIN_ALLOW_THREADS
    while (position < size) {
        if (remaining > 0) {
            Py_ssize_t take = size - position < remaining ? size - position : remaining;
            memcpy(output + written, data + position, (size_t)take);
            written += take;
            position += take;
            remaining -= take;
            continue;
        }
        if (size - position < 1 + int_size) {
            break; /* the next length is cut by the end of data: the caller brings more */
        }
        unsigned char sign = data[position];
        uint64_t length = 0;
        for (Py_ssize_t index = int_size; index >= 1; index--) {
            length = (length << 8) | data[position + index];
        }
        if (sign > 1 || (sign == 1 && length != 0) || length > (uint64_t)PY_SSIZE_T_MAX) {
            bad_frame = 1; /* a negative length: not a data block this parser understands */
            break;
        }
        position += 1 + int_size;
        if (length == 0) {
            ended = 1;
            break;
        }
        remaining = (Py_ssize_t)length;
    }
    Py_END_ALLOW_THREADS

    PyBuffer_Release(&view);
    if (bad_frame) {
        Py_DECREF(text);
        PyErr_Format(PyExc_ValueError, "unframe: a frame at offset %zd has an invalid length", position);
        return NULL;
    }
    if (_PyBytes_Resize(&text, written) < 0) {
        return NULL;
    }
    return Py_BuildValue("(NnnO)", text, position, remaining, ended ? Py_True : Py_False);
}

static PyMethodDef copy_frames_methods[] = {
    {"unframe", unframe, METH_VARARGS, unframe_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef copy_frames_module = {
    PyModuleDef_HEAD_INIT,
    "_copy_frames",
    "The COPY text inside a pg_dump custom-format data block (see copy_frames.py).",
    -1,
    copy_frames_methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC PyInit__copy_frames(void) { return PyModule_Create(&copy_frames_module); }

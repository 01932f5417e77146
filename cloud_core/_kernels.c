/* Three hot loops of the encoder in C, each beside a numpy implementation that stays the reference:

   - missed_rotation: the moyopy backend's borderline guard, cloud_core/symmetry.py's `_missed_rotation`
     (documented there), computed with the same floating-point steps. The numpy version spends ~0.1 ms per
     Materials Project structure in a few hundred small-array calls; this one a few us (fetching moyopy's
     rotations, in symmetry.py, costs more).
   - symmetrizing_displacement: the guard's other costly test, `_symmetrizing_displacement` there, reading
     moyopy's nested lists directly (converting them to arrays cost as much as the arithmetic).
   - overlap_candidate: a filter in front of cloud_core/structures.py's `_check_no_overlaps`: False means no
     two atoms are within the minimum distance, True sends the structure to the numpy test (which reports
     the pair).

   symmetry.py and structures.py use these when the extension is built (pip install compiles it; without a compiler they run
   the numpy code), and the tests check that the answers are the same.

   Arrays come in through the buffer protocol, C-contiguous: lattice 3 x 3 float64 (rows are the basis
   vectors), fractional coordinates n x 3 float64, site kinds n int32 (small non-negative integers), and
   moyopy's rotations k x 3 x 3 int64 (input basis, acting on column vectors).

   Built with -ffp-contract=off: no fused multiply-adds, so every product and sum rounds as numpy's do. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Integer combinations (-1, 0, 1)^3 but zero, in symmetry.py's _COMBINATIONS order: candidate images of
   the reduced basis vectors. UNIT holds the indices of (1,0,0), (0,1,0), (0,0,1). */
static int COMB[26][3];
static int UNIT[3];

static void init_combinations(void) {
    int n = 0;
    for (int i = -1; i <= 1; i++)
        for (int j = -1; j <= 1; j++)
            for (int k = -1; k <= 1; k++) {
                if (!i && !j && !k) continue;
                COMB[n][0] = i, COMB[n][1] = j, COMB[n][2] = k;
                if (j == 0 && k == 0 && i == 1) UNIT[0] = n;
                if (i == 0 && k == 0 && j == 1) UNIT[1] = n;
                if (i == 0 && j == 0 && k == 1) UNIT[2] = n;
                n++;
            }
}

/* symmetry.py's _reduce: pairwise Gauss reduction; `matrix` (integer) satisfies reduced = matrix @ lattice.
   Returns whether the basis changed (if not, basis = lattice and matrix = identity). */
static int gauss_reduce(const double *lattice, double basis[3][3], long matrix[3][3]) {
    double norms[3];
    for (int i = 0; i < 3; i++) {
        for (int j = 0; j < 3; j++) basis[i][j] = lattice[3 * i + j], matrix[i][j] = (i == j);
        norms[i] = basis[i][0] * basis[i][0] + basis[i][1] * basis[i][1] + basis[i][2] * basis[i][2];
    }
    int reduced = 0;
    for (int iteration = 0; iteration < 50; iteration++) {
        int changed = 0;
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 3; j++) {
                if (i == j) continue;
                double *bi = basis[i], *bj = basis[j];
                double k = nearbyint((bi[0] * bj[0] + bi[1] * bj[1] + bi[2] * bj[2]) / norms[j]);  // half to even, as round()
                if (k == 0) continue;
                double shorter[3] = {bi[0] - k * bj[0], bi[1] - k * bj[1], bi[2] - k * bj[2]};
                double norm = shorter[0] * shorter[0] + shorter[1] * shorter[1] + shorter[2] * shorter[2];
                if (norm < norms[i] - 1e-12) {
                    memcpy(basis[i], shorter, sizeof shorter);
                    norms[i] = norm;
                    for (int c = 0; c < 3; c++) matrix[i][c] -= (long)k * matrix[j][c];
                    changed = reduced = 1;
                }
            }
        if (!changed) break;
    }
    return reduced;
}

static int unimodular(int a, int b, int c) {
    const int *x = COMB[a], *y = COMB[b], *z = COMB[c];
    int det = x[0] * (y[1] * z[2] - y[2] * z[1]) - x[1] * (y[0] * z[2] - y[2] * z[0]) + x[2] * (y[0] * z[1] - y[1] * z[0]);
    return det == 1 || det == -1;
}

/* symmetry.py's _lattice_rotations: writes the kept index triples (at most 26^3) to `triples` and returns
   their count; 0 when the per-axis candidate counts cannot give more than `at_most`. */
static int lattice_rotations(double basis[3][3], double length_tolerance, double angle_tolerance, long at_most,
                             int (*triples)[3]) {
    double vectors[26][3], gram[26][26], lengths[26];
    for (int c = 0; c < 26; c++)
        for (int j = 0; j < 3; j++)
            vectors[c][j] = COMB[c][0] * basis[0][j] + COMB[c][1] * basis[1][j] + COMB[c][2] * basis[2][j];
    for (int c = 0; c < 26; c++)
        for (int d = 0; d < 26; d++)
            gram[c][d] = vectors[c][0] * vectors[d][0] + vectors[c][1] * vectors[d][1] + vectors[c][2] * vectors[d][2];
    for (int c = 0; c < 26; c++) lengths[c] = sqrt(gram[c][c]);
    int close[3][26], nclose[3] = {0, 0, 0};
    for (int u = 0; u < 3; u++)
        for (int c = 0; c < 26; c++)
            if (fabs(lengths[c] - lengths[UNIT[u]]) <= length_tolerance) close[u][nclose[u]++] = c;
    if ((long)nclose[0] * nclose[1] * nclose[2] <= at_most) return 0;
#define ANGLE(i, j) (acos(fmin(fmax(gram[i][j] / (lengths[i] * lengths[j]), -1.0), 1.0)) * (180.0 / M_PI))
    double unit01 = ANGLE(UNIT[0], UNIT[1]), unit02 = ANGLE(UNIT[0], UNIT[2]), unit12 = ANGLE(UNIT[1], UNIT[2]);
    int count = 0;
    for (int p = 0; p < nclose[0]; p++)
        for (int q = 0; q < nclose[1]; q++) {
            int a = close[0][p], b = close[1][q];
            if (fabs(ANGLE(a, b) - unit01) > angle_tolerance) continue;  /* once per pair, not per triple */
            for (int r = 0; r < nclose[2]; r++) {
                int c = close[2][r];
                if (!unimodular(a, b, c)) continue;
                if (fabs(ANGLE(a, c) - unit02) > angle_tolerance) continue;
                if (fabs(ANGLE(b, c) - unit12) > angle_tolerance) continue;
                triples[count][0] = a, triples[count][1] = b, triples[count][2] = c;
                count++;
            }
        }
#undef ANGLE
    return count;
}

typedef struct {
    Py_buffer lattice, frac, kinds, rotations;
} Inputs;

static void release(Inputs *in) {
    if (in->lattice.obj) PyBuffer_Release(&in->lattice);
    if (in->frac.obj) PyBuffer_Release(&in->frac);
    if (in->kinds.obj) PyBuffer_Release(&in->kinds);
    if (in->rotations.obj) PyBuffer_Release(&in->rotations);
}

static int check_size(Py_buffer *view, Py_ssize_t bytes, const char *what) {
    if (view->len != bytes) {
        PyErr_Format(PyExc_ValueError, "%s: expected %zd bytes, got %zd", what, bytes, view->len);
        return 0;
    }
    return 1;
}

/* The atom-mapping part of _missed_rotation, for the rotations (index triples) moyopy did not report:
   does some (W, t), t taking the first atom of the rarest kind onto an atom of that kind, map every atom
   within `tolerance` (Å) of an atom of its kind? The answer does not depend on the order of the tests. */
static int maps_atoms(int (*missed)[3], int nmissed, double basis[3][3], const double *x, const int32_t *kinds,
                      Py_ssize_t n, double tolerance, int *error) {
    int nkinds = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (kinds[i] < 0) {
            PyErr_SetString(PyExc_ValueError, "site kinds must be non-negative");
            *error = 1;
            return 0;
        }
        if (kinds[i] + 1 > nkinds) nkinds = kinds[i] + 1;
    }
    Py_ssize_t *counts = calloc(nkinds + 1, sizeof *counts), *start = calloc(nkinds + 1, sizeof *start);
    Py_ssize_t *members = malloc(n * sizeof *members);
    int *order = malloc(nkinds * sizeof *order);
    double *images = malloc(3 * n * sizeof *images);
    int answer = 0;
    if (!counts || !start || !members || !order || !images) {
        PyErr_NoMemory();
        *error = 1;
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) counts[kinds[i]]++;
    for (int k = 0; k < nkinds; k++) start[k + 1] = start[k] + counts[k];
    {
        Py_ssize_t *fill = calloc(nkinds, sizeof *fill);
        if (!fill) {
            PyErr_NoMemory();
            *error = 1;
            goto done;
        }
        for (Py_ssize_t i = 0; i < n; i++) members[start[kinds[i]] + fill[kinds[i]]++] = i;  // site order within a kind
        free(fill);
    }
    /* Kinds present, rarest first, ties by kind number (numpy's stable argsort of the counts). */
    int norder = 0;
    for (int k = 0; k < nkinds; k++)
        if (counts[k]) order[norder++] = k;
    for (int i = 1; i < norder; i++)  // insertion sort: stable, and there are few kinds
        for (int j = i; j > 0 && counts[order[j]] < counts[order[j - 1]]; j--) {
            int swap = order[j];
            order[j] = order[j - 1], order[j - 1] = swap;
        }
    const Py_ssize_t *rare = members + start[order[0]];
    Py_ssize_t nrare = counts[order[0]], first = rare[0];
    for (int w = 0; w < nmissed && !answer; w++) {
        double N[3][3];  // rows: images of the reduced basis vectors; images[s] = x[s] @ N
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 3; j++) N[i][j] = COMB[missed[w][i]][j];
        for (Py_ssize_t s = 0; s < n; s++)
            for (int j = 0; j < 3; j++)
                images[3 * s + j] = x[3 * s] * N[0][j] + x[3 * s + 1] * N[1][j] + x[3 * s + 2] * N[2][j];
        for (Py_ssize_t m = 0; m < nrare && !answer; m++) {
            double shift[3];
            for (int j = 0; j < 3; j++) shift[j] = x[3 * rare[m] + j] - images[3 * first + j];
            int all_mapped = 1;
            for (int o = 0; o < norder && all_mapped; o++) {
                const Py_ssize_t *targets = members + start[order[o]];
                Py_ssize_t ntargets = counts[order[o]];
                for (Py_ssize_t a = 0; a < ntargets && all_mapped; a++) {
                    Py_ssize_t s = targets[a];
                    if (s == first) continue;  // lands on an atom by construction
                    double moved[3];
                    for (int j = 0; j < 3; j++) moved[j] = images[3 * s + j] + shift[j];
                    int mapped = 0;
                    for (Py_ssize_t b = 0; b < ntargets && !mapped; b++) {
                        const double *target = x + 3 * targets[b];
                        double delta[3], cart[3];
                        for (int j = 0; j < 3; j++) {
                            delta[j] = moved[j] - target[j];
                            delta[j] -= nearbyint(delta[j]);
                        }
                        for (int j = 0; j < 3; j++)
                            cart[j] = delta[0] * basis[0][j] + delta[1] * basis[1][j] + delta[2] * basis[2][j];
                        mapped = sqrt(cart[0] * cart[0] + cart[1] * cart[1] + cart[2] * cart[2]) <= tolerance;
                    }
                    all_mapped = mapped;
                }
            }
            answer = all_mapped;
        }
    }
done:
    free(counts), free(start), free(members), free(order), free(images);
    return answer;
}

/* missed_rotation(lattice, frac, kinds, rotations, length_tolerance, angle_tolerance, mapping_tolerance) -> bool
   symmetry.py's _missed_rotation, given moyopy's rotations. */
static PyObject *missed_rotation(PyObject *self, PyObject *args) {
    Inputs in = {0};
    double length_tolerance, angle_tolerance, mapping_tolerance;
    if (!PyArg_ParseTuple(args, "y*y*y*y*ddd", &in.lattice, &in.frac, &in.kinds, &in.rotations, &length_tolerance,
                          &angle_tolerance, &mapping_tolerance))
        return NULL;
    Py_ssize_t n = in.kinds.len / (Py_ssize_t)sizeof(int32_t), nrot = in.rotations.len / (Py_ssize_t)(9 * sizeof(int64_t));
    PyObject *result = NULL;
    if (!check_size(&in.lattice, 9 * sizeof(double), "lattice") || !check_size(&in.frac, 3 * n * sizeof(double), "frac") ||
        !check_size(&in.kinds, n * sizeof(int32_t), "kinds") ||
        !check_size(&in.rotations, nrot * 9 * sizeof(int64_t), "rotations"))
        goto done;
    const int64_t *R = in.rotations.buf;
    /* moyopy's operations form a group: its distinct rotations are the operations over the pure translations.
       48 is m-3m, the largest point group of a lattice, found whole: nothing can have been missed. */
    long identities = 0;
    for (Py_ssize_t k = 0; k < nrot; k++) {
        const int64_t *r = R + 9 * k;
        identities += r[0] == 1 && r[1] == 0 && r[2] == 0 && r[3] == 0 && r[4] == 1 && r[5] == 0 && r[6] == 0 &&
                      r[7] == 0 && r[8] == 1;
    }
    long n_found = identities ? nrot / identities : 0;
    if (n == 0 || n_found == 48) {
        result = Py_NewRef(Py_False);
        goto done;
    }
    double basis[3][3];
    long M[3][3];
    int reduced = gauss_reduce(in.lattice.buf, basis, M);
    static int triples[26 * 26 * 26][3];  // the module runs under the GIL: one call at a time
    int ntriples = lattice_rotations(basis, length_tolerance, angle_tolerance, n_found, triples);
    if (ntriples <= n_found) {  // moyopy's rotations are lattice rotations: nothing was missed
        result = Py_NewRef(Py_False);
        goto done;
    }
    /* moyopy's rotations in the reduced basis, W = M^-T R M^T (exact integers: M is unimodular, so its
       inverse is its adjugate times its determinant). */
    long inverse[3][3] = {{1, 0, 0}, {0, 1, 0}, {0, 0, 1}};
    if (reduced) {
        long cof[3][3];
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 3; j++) {
                int r0 = (i + 1) % 3, r1 = (i + 2) % 3, c0 = (j + 1) % 3, c1 = (j + 2) % 3;
                cof[i][j] = M[r0][c0] * M[r1][c1] - M[r0][c1] * M[r1][c0];
            }
        long det = M[0][0] * cof[0][0] + M[0][1] * cof[0][1] + M[0][2] * cof[0][2];
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 3; j++) inverse[i][j] = cof[j][i] * det;  // adjugate / det, det = +-1
    }
    /* Keep the triples whose matrix W (W[r][col] = COMB[triple[col]][r]) is none of moyopy's. */
    int nmissed = 0;
    for (int t = 0; t < ntriples; t++) {
        int found = 0;
        for (Py_ssize_t k = 0; k < nrot && !found; k++) {
            const int64_t *r = R + 9 * k;
            found = 1;
            for (int a = 0; a < 3 && found; a++)
                for (int b = 0; b < 3 && found; b++) {
                    long w = 0;
                    for (int c = 0; c < 3; c++)
                        for (int d = 0; d < 3; d++) w += inverse[c][a] * (long)r[3 * c + d] * M[b][d];
                    found = w == COMB[triples[t][b]][a];
                }
        }
        if (!found) {
            memmove(triples[nmissed], triples[t], sizeof triples[t]);
            nmissed++;
        }
    }
    if (!nmissed) {
        result = Py_NewRef(Py_False);
        goto done;
    }
    /* Fractional coordinates in the reduced basis: x = frac @ inverse. */
    const double *frac = in.frac.buf;
    double *x = malloc(3 * n * sizeof *x);
    if (!x) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t s = 0; s < n; s++)
        for (int j = 0; j < 3; j++)
            x[3 * s + j] = reduced ? frac[3 * s] * (double)inverse[0][j] + frac[3 * s + 1] * (double)inverse[1][j] +
                                         frac[3 * s + 2] * (double)inverse[2][j]
                                   : frac[3 * s + j];
    int error = 0;
    int answer = maps_atoms(triples, nmissed, basis, x, in.kinds.buf, n, mapping_tolerance, &error);
    free(x);
    if (!error) result = PyBool_FromLong(answer);
done:
    release(&in);
    return result;
}

/* overlap_candidate(frac, lattice, bound, min_distance) -> bool
   Is some pair of atoms (i < j) within `bound` on every fractional axis (minimum image, coordinates wrapped
   into the cell as _check_no_overlaps does) and within min_distance + 1e-9 Å in Cartesian distance? The
   margin makes False safe: the numpy test, whose rounding may differ by an ulp, would find no pair either.
   Assumes every bound is below 1/2 (then the minimum image is the only one that can be that close). */
static PyObject *overlap_candidate(PyObject *self, PyObject *args) {
    Py_buffer frac_view = {0}, lattice_view = {0}, bound_view = {0};
    double min_distance;
    if (!PyArg_ParseTuple(args, "y*y*y*d", &frac_view, &lattice_view, &bound_view, &min_distance)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = frac_view.len / (Py_ssize_t)(3 * sizeof(double));
    if (!check_size(&frac_view, 3 * n * sizeof(double), "frac") || !check_size(&lattice_view, 9 * sizeof(double), "lattice") ||
        !check_size(&bound_view, 3 * sizeof(double), "bound"))
        goto done;
    const double *raw = frac_view.buf, *L = lattice_view.buf, *bound = bound_view.buf;
    double *frac = malloc((3 * n + 1) * sizeof *frac);
    if (!frac) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t k = 0; k < 3 * n; k++) frac[k] = raw[k] - floor(raw[k]);
    int found = 0;
    double limit = min_distance + 1e-9;
    for (Py_ssize_t i = 0; i < n && !found; i++)
        for (Py_ssize_t j = i + 1; j < n && !found; j++) {
            double d[3];
            int near = 1;
            for (int k = 0; k < 3 && near; k++) {
                d[k] = frac[3 * j + k] - frac[3 * i + k];
                d[k] -= nearbyint(d[k]);
                near = fabs(d[k]) <= bound[k];
            }
            if (!near) continue;
            double x = d[0] * L[0] + d[1] * L[3] + d[2] * L[6], y = d[0] * L[1] + d[1] * L[4] + d[2] * L[7],
                   z = d[0] * L[2] + d[1] * L[5] + d[2] * L[8];
            found = sqrt(x * x + y * y + z * z) <= limit;
        }
    free(frac);
    result = PyBool_FromLong(found);
done:
    PyBuffer_Release(&frac_view), PyBuffer_Release(&lattice_view), PyBuffer_Release(&bound_view);
    return result;
}

/* A sequence of `count` numbers into out; returns 0 with an exception set if the length or a value is wrong. */
static int read_numbers(PyObject *numbers, Py_ssize_t count, double *out, const char *what) {
    PyObject *seq = PySequence_Fast(numbers, what);
    if (!seq) return 0;
    int ok = PySequence_Fast_GET_SIZE(seq) == count;
    for (Py_ssize_t j = 0; j < count && ok; j++) {
        out[j] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(seq, j));
        ok = !(out[j] == -1.0 && PyErr_Occurred());
    }
    Py_DECREF(seq);
    if (!ok && !PyErr_Occurred()) PyErr_Format(PyExc_ValueError, "%s: expected %zd numbers", what, count);
    return ok;
}

/* `nrows` rows of 3 numbers (nested lists, as moyopy returns them) into out, row after row. */
static int read_rows(PyObject *rows, Py_ssize_t nrows, double *out, const char *what) {
    PyObject *seq = PySequence_Fast(rows, what);
    if (!seq) return 0;
    int ok = PySequence_Fast_GET_SIZE(seq) == nrows;
    for (Py_ssize_t i = 0; i < nrows && ok; i++) ok = read_numbers(PySequence_Fast_GET_ITEM(seq, i), 3, out + 3 * i, what);
    Py_DECREF(seq);
    if (!ok && !PyErr_Occurred()) PyErr_Format(PyExc_ValueError, "%s: expected %zd rows of 3 numbers", what, nrows);
    return ok;
}

/* symmetrizing_displacement(frac, positions, mapping, origin_shift, linear, basis) -> float
   symmetry.py's _symmetrizing_displacement from moyopy's refined primitive cell (positions: its sites,
   mapping: input site -> primitive site, origin_shift and linear: input -> primitive coordinates, basis:
   its lattice): the largest distance (Å) between an input atom and its place there. */
static PyObject *symmetrizing_displacement(PyObject *self, PyObject *args) {
    Py_buffer frac_view = {0};
    PyObject *positions, *mapping, *shift_rows, *linear_rows, *basis_rows;  // moyopy's lists
    if (!PyArg_ParseTuple(args, "y*OOOOO", &frac_view, &positions, &mapping, &shift_rows, &linear_rows, &basis_rows))
        return NULL;
    PyObject *result = NULL, *map_seq = NULL;
    double *ideal = NULL;
    Py_ssize_t n = frac_view.len / (Py_ssize_t)(3 * sizeof(double));
    double shift[3], linear[9], basis[9];
    if (!check_size(&frac_view, 3 * n * sizeof(double), "frac") || !read_numbers(shift_rows, 3, shift, "origin shift") ||
        !read_rows(linear_rows, 3, linear, "linear") || !read_rows(basis_rows, 3, basis, "basis"))
        goto done;
    Py_ssize_t m = PySequence_Size(positions);
    map_seq = PySequence_Fast(mapping, "mapping");
    if (m < 0 || !map_seq) goto done;
    if (PySequence_Fast_GET_SIZE(map_seq) != n) {
        PyErr_SetString(PyExc_ValueError, "mapping: one primitive site per input site expected");
        goto done;
    }
    ideal = malloc((3 * m + 1) * sizeof *ideal);
    if (!ideal) {
        PyErr_NoMemory();
        goto done;
    }
    if (!read_rows(positions, m, ideal, "positions")) goto done;
    /* The inverse of `linear` by its adjugate, as symmetry.py's _inverse3. */
    double a = linear[0], b = linear[1], c = linear[2], d = linear[3], e = linear[4], f = linear[5], g = linear[6],
           h = linear[7], i = linear[8];
    double co_a = e * i - f * h, co_b = f * g - d * i, co_c = d * h - e * g;
    double det = a * co_a + b * co_b + c * co_c;
    double adjugate[9] = {co_a, c * h - b * i, b * f - c * e, co_b, a * i - c * g, c * d - a * f, co_c, b * g - a * h, a * e - b * d};
    double inverse[9];
    for (int k = 0; k < 9; k++) inverse[k] = adjugate[k] / det;
    const double *frac = frac_view.buf;
    double largest = 0.0;
    for (Py_ssize_t s = 0; s < n; s++) {
        Py_ssize_t site = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(map_seq, s));
        if (site < 0 || site >= m) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "mapping: primitive site out of range");
            goto done;
        }
        double p[3], delta[3];
        for (int k = 0; k < 3; k++) p[k] = frac[3 * s + k] - shift[k];
        for (int j = 0; j < 3; j++) {
            delta[j] = p[0] * inverse[3 * j] + p[1] * inverse[3 * j + 1] + p[2] * inverse[3 * j + 2] - ideal[3 * site + j];
            delta[j] -= nearbyint(delta[j]);
        }
        double x = delta[0] * basis[0] + delta[1] * basis[3] + delta[2] * basis[6];
        double y = delta[0] * basis[1] + delta[1] * basis[4] + delta[2] * basis[7];
        double z = delta[0] * basis[2] + delta[1] * basis[5] + delta[2] * basis[8];
        double squared = x * x + y * y + z * z;
        if (squared > largest) largest = squared;
    }
    result = PyFloat_FromDouble(sqrt(largest));
done:
    PyBuffer_Release(&frac_view);
    Py_XDECREF(map_seq);
    free(ideal);
    return result;
}

static PyMethodDef methods[] = {
    {"symmetrizing_displacement", symmetrizing_displacement, METH_VARARGS,
     "symmetrizing_displacement(frac, positions, mapping, origin_shift, linear, basis) -> float"},
    {"overlap_candidate", overlap_candidate, METH_VARARGS, "overlap_candidate(frac, lattice, bound, min_distance) -> bool"},
    {"missed_rotation", missed_rotation, METH_VARARGS,
     "missed_rotation(lattice, frac, kinds, rotations, length_tolerance, angle_tolerance, mapping_tolerance) -> bool"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels", "Hot loops of the encoder in C (see _kernels.c).",
                                    -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__kernels(void) {
    init_combinations();
    return PyModule_Create(&module);
}

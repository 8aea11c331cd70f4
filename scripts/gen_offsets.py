#!/usr/bin/env python3
"""Generate rust/python/src/offsets_generated.rs: CPython struct offsets.

The signal handler walks frame chains with raw memory reads, so it needs the
byte offsets of a few CPython-internal fields for every supported minor
version. Guessing them is fragile; instead we compile a tiny C program against
each interpreter's own (internal) headers and print offsetof()/sizeof().

For each interpreter we then cross-check the numbers against the live process
(ctypes reads of its own thread state, frames and code objects) and, on 3.13+,
against the _Py_DebugOffsets table CPython itself publishes in
_PyRuntime.debug_offsets.

On 3.13+ the file also records where in _PyRuntimeState the debug-offsets
cookie, version and the entries matching our fields sit (DEBUG_OFFSETS_PY3_x,
debug_offsets_layout()), so the extension can refuse, at profile start, an
interpreter build whose published offsets differ from the generated ones.

Usage:
    scripts/gen_offsets.py                 # pyenv's newest 3.9..3.13, sid's 3.14 and 3.15
    scripts/gen_offsets.py PY [PY ...]     # explicit python executables
    scripts/gen_offsets.py --check [PY..]  # exit 1 if the committed file is stale
    scripts/gen_offsets.py --collect PY    # one interpreter's measurements as JSON (used
                                           # inside the sid root)

Only GIL builds on x86-64 Linux are supported. Stdlib only.
"""

import argparse
import difflib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "rust", "python", "src", "cpython", "offsets_generated.rs")
MINORS = (9, 10, 11, 12, 13, 14, 15)
# pyenv has these; the others come from the Debian sid root of scripts/sid-python.
PYENV_MINORS = (9, 10, 11, 12, 13)
SID = os.path.join(REPO, "scripts", "sid-python")
NONE = None  # rendered as usize::MAX / 255: "field does not exist here"

# Order matters: it is the field order of `Offsets` in offsets.rs.
FIELDS = (
    "tstate_next", "tstate_interp", "tstate_thread_id",
    "tstate_native_thread_id", "tstate_dict", "tstate_frame",
    "cframe_current_frame",
    "frame_back", "frame_code", "frame_instr", "frame_owner", "frame_size",
    "code_code_adaptive", "code_firsttraceable", "code_firstlineno",
    "interp_tstate_head",
    "tstate_datastack_chunk", "tstate_datastack_top",
    "chunk_previous", "chunk_top", "chunk_data",
    "frame_is_entry", "stackref_tag_bits", "code_resume_opcode", "frame_lasti_unit",
)


def layout_for(minor):
    if minor <= 10:
        return "FrameObject"
    if minor <= 12:
        return "CFrame"
    return "Direct"


def spec(minor):
    """C expressions for each field (None where the field does not exist).

    Field names were read off each version's headers; a wrong name is a
    compile error, so this table cannot silently drift.
    """
    ts = "PyThreadState"
    layout = layout_for(minor)
    s = {
        # 3.11 marks a run's first frame in the frame itself; 3.12+ push a shim frame instead.
        "frame_is_entry": ("offsetof(_PyInterpreterFrame, is_entry)" if minor == 11 else NONE),
        # 3.14+: f_executable is a _PyStackRef whose low bits are tags, not address.
        "stackref_tag_bits": ("Py_TAG_BITS" if minor >= 14 else "0"),
        # 3.9/3.10: bytes per unit of f_lasti (3.9 counts bytes, 3.10 code units); 3.11+ keep
        # an instruction pointer instead.
        "frame_lasti_unit": ("1" if minor == 9 else "sizeof(_Py_CODEUNIT)" if minor == 10 else NONE),
        # 3.11+: the opcode at co_code[2 * _co_firsttraceable] (verified at start).
        "code_resume_opcode": ("RESUME" if minor >= 11 else NONE),
        "tstate_next": f"offsetof({ts}, next)",
        "tstate_interp": f"offsetof({ts}, interp)",
        "tstate_thread_id": f"offsetof({ts}, thread_id)",
        "tstate_native_thread_id": (
            f"offsetof({ts}, native_thread_id)" if minor >= 11 else NONE),
        # Per-thread dict behind PyThreadState_GetDict() (3.9-3.13).
        "tstate_dict": f"offsetof({ts}, dict)",
        "code_firstlineno": "offsetof(PyCodeObject, co_firstlineno)",
    }
    if layout == "FrameObject":
        fr = "PyFrameObject"
        s.update(
            tstate_frame=f"offsetof({ts}, frame)",
            cframe_current_frame=NONE,
            frame_back=f"offsetof({fr}, f_back)",
            frame_code=f"offsetof({fr}, f_code)",
            frame_instr=f"offsetof({fr}, f_lasti)",
            frame_owner=NONE,
            frame_size=f"sizeof({fr})",
            code_code_adaptive=NONE,
            code_firsttraceable=NONE,
            # 3.9/3.10 keep the thread list head directly in PyInterpreterState.
            interp_tstate_head="offsetof(PyInterpreterState, tstate_head)",
            tstate_datastack_chunk=NONE,
            tstate_datastack_top=NONE,
            chunk_previous=NONE,
            chunk_top=NONE,
            chunk_data=NONE,
        )
    else:
        fr = "_PyInterpreterFrame"
        s.update(
            tstate_frame=(f"offsetof({ts}, cframe)" if layout == "CFrame"
                          else f"offsetof({ts}, current_frame)"),
            cframe_current_frame=("offsetof(_PyCFrame, current_frame)"
                                  if layout == "CFrame" else NONE),
            frame_back=f"offsetof({fr}, previous)",
            frame_code=(f"offsetof({fr}, f_code)" if minor <= 12
                        else f"offsetof({fr}, f_executable)"),  # a _PyStackRef on 3.14+
            frame_instr=(f"offsetof({fr}, prev_instr)" if minor <= 12
                         else f"offsetof({fr}, instr_ptr)"),
            frame_owner=f"offsetof({fr}, owner)",
            frame_size=f"sizeof({fr})",
            code_code_adaptive="offsetof(PyCodeObject, co_code_adaptive)",
            code_firsttraceable="offsetof(PyCodeObject, _co_firsttraceable)",
            interp_tstate_head="offsetof(PyInterpreterState, threads.head)",
            # The thread's data stack, where its own (FRAME_OWNED_BY_THREAD) frames live.
            tstate_datastack_chunk=f"offsetof({ts}, datastack_chunk)",
            tstate_datastack_top=f"offsetof({ts}, datastack_top)",
            chunk_previous="offsetof(_PyStackChunk, previous)",
            chunk_top="offsetof(_PyStackChunk, top)",
            chunk_data="offsetof(_PyStackChunk, data)",
        )
    return s


def owner_enum(minor):
    """enum _frameowner members present in this version (3.11+ only)."""
    if minor < 11:
        return []
    names = ["FRAME_OWNED_BY_THREAD", "FRAME_OWNED_BY_GENERATOR",
             "FRAME_OWNED_BY_FRAME_OBJECT"]
    if 12 <= minor <= 14:
        names.append("FRAME_OWNED_BY_CSTACK")  # shim/entry frames, 3.12 and 3.13
    if minor >= 14:
        names.append("FRAME_OWNED_BY_INTERPRETER")  # the entry shim from 3.14 on
    return names


def shim_owner(minor):
    """The smallest owner value of frames the interpreter owns (entry shims), which no
    Python-level view shows; None before 3.12, where no such frames exist."""
    if minor < 12:
        return None
    return "FRAME_OWNED_BY_CSTACK" if minor <= 13 else "FRAME_OWNED_BY_INTERPRETER"


# Width checks: the Rust side reads these fields with fixed-size loads, so a
# type change (e.g. f_lasti int -> pointer) must fail loudly, not misread.
def width_asserts(minor):
    ts, fo, fi = "PyThreadState", "PyFrameObject", "_PyInterpreterFrame"
    a = [
        (f"(({ts}*)0)->next", 8), (f"(({ts}*)0)->interp", 8),
        (f"(({ts}*)0)->thread_id", 8), (f"(({ts}*)0)->dict", 8),
        ("((PyCodeObject*)0)->co_firstlineno", 4),
    ]
    if minor >= 11:
        a += [(f"(({ts}*)0)->native_thread_id", 8),
              (f"(({fi}*)0)->previous", 8), (f"(({fi}*)0)->owner", 1),
              ("((PyCodeObject*)0)->_co_firsttraceable", 4),
              (f"(({ts}*)0)->datastack_chunk", 8), (f"(({ts}*)0)->datastack_top", 8),
              ("((_PyStackChunk*)0)->previous", 8), ("((_PyStackChunk*)0)->top", 8)]
    if minor == 11:
        a += [(f"(({fi}*)0)->is_entry", 1)]
    if minor <= 10:
        a += [(f"(({ts}*)0)->frame", 8), (f"(({fo}*)0)->f_back", 8),
              (f"(({fo}*)0)->f_code", 8), (f"(({fo}*)0)->f_lasti", 4),
              ("((PyInterpreterState*)0)->tstate_head", 8)]
    elif minor <= 12:
        a += [(f"(({ts}*)0)->cframe", 8),
              ("((_PyCFrame*)0)->current_frame", 8),
              (f"(({fi}*)0)->f_code", 8), (f"(({fi}*)0)->prev_instr", 8)]
    else:
        a += [(f"(({ts}*)0)->current_frame", 8),
              (f"(({fi}*)0)->f_executable", 8), (f"(({fi}*)0)->instr_ptr", 8)]
    return a


# 3.13+: what CPython's own _Py_DebugOffsets_INIT (pycore_runtime_init.h)
# computes, keyed by our field name -> (debug_offsets member, init expression).
DEBUG_OFFSETS_3_13 = {
    "tstate_next": ("thread_state.next", "offsetof(PyThreadState, next)"),
    "tstate_interp": ("thread_state.interp", "offsetof(PyThreadState, interp)"),
    "tstate_thread_id": ("thread_state.thread_id",
                         "offsetof(PyThreadState, thread_id)"),
    "tstate_native_thread_id": ("thread_state.native_thread_id",
                                "offsetof(PyThreadState, native_thread_id)"),
    "tstate_frame": ("thread_state.current_frame",
                     "offsetof(PyThreadState, current_frame)"),
    "frame_back": ("interpreter_frame.previous",
                   "offsetof(_PyInterpreterFrame, previous)"),
    "frame_code": ("interpreter_frame.executable",
                   "offsetof(_PyInterpreterFrame, f_executable)"),
    "frame_instr": ("interpreter_frame.instr_ptr",
                    "offsetof(_PyInterpreterFrame, instr_ptr)"),
    "frame_owner": ("interpreter_frame.owner",
                    "offsetof(_PyInterpreterFrame, owner)"),
    "frame_size": ("interpreter_frame.size", "sizeof(_PyInterpreterFrame)"),
    "code_code_adaptive": ("code_object.co_code_adaptive",
                           "offsetof(PyCodeObject, co_code_adaptive)"),
    "code_firstlineno": ("code_object.firstlineno",
                         "offsetof(PyCodeObject, co_firstlineno)"),
    "interp_tstate_head": ("interpreter_state.threads_head",
                           "offsetof(PyInterpreterState, threads.head)"),
}


def debug_offsets(minor):
    """The fields `_Py_DebugOffsets` publishes in this version (empty before 3.13)."""
    if minor < 13:
        return {}
    d = dict(DEBUG_OFFSETS_3_13)
    if minor >= 14:
        d["tstate_datastack_chunk"] = ("thread_state.datastack_chunk",
                                       "offsetof(PyThreadState, datastack_chunk)")
    return d


# The fields emitted for the extension, which reads them from the running interpreter
# (rust/python/src/cpython/debug_offsets.rs). frame_size is verified here only: the walker
# does not read memory with it.
def debug_checks(minor):
    return [name for name in FIELDS if name in debug_offsets(minor) and name != "frame_size"]


assert set(DEBUG_OFFSETS_3_13) <= set(FIELDS)


def c_source(minor):
    lines = [
        "#define Py_BUILD_CORE 1",  # internal headers refuse to load without it
        "#include <stddef.h>",
        "#include <stdio.h>",
        '#include "Python.h"',
        '#include "frameobject.h"',  # PyFrameObject body (3.9/3.10)
        '#include "internal/pycore_interp.h"',  # struct _is
    ]
    if minor >= 11:
        lines.append('#include "internal/pycore_frame.h"')
        lines.append('#include "opcode.h"')
    if minor >= 13:
        lines.append('#include "internal/pycore_runtime.h"')
    if minor >= 14:
        lines.append('#include "internal/pycore_stackref.h"')
    asserts = width_asserts(minor)
    if minor >= 13:
        # The extension reads these as raw 8-byte cookie / u64 values.
        asserts += [("((_Py_DebugOffsets*)0)->cookie", 8),
                    ("((_Py_DebugOffsets*)0)->version", 8)]
        asserts += [(f"((_Py_DebugOffsets*)0)->{member}", 8)
                    for member, _ in debug_offsets(minor).values()]
    if minor >= 14:
        asserts += [("((_Py_DebugOffsets*)0)->free_threaded", 8)]
    for expr, width in asserts:
        lines.append(f'_Static_assert(sizeof({expr}) == {width}, "{expr}");')
    lines.append("int main(void) {")
    for name, expr in spec(minor).items():
        if expr is not None:
            lines.append(f'  printf("off {name} %zu\\n", (size_t)({expr}));')
    for name in owner_enum(minor):
        lines.append(f'  printf("enum {name} %d\\n", (int){name});')
    if minor >= 13:
        for name, (member, init) in debug_offsets(minor).items():
            # Where the value lives inside _PyRuntime, and the initializer's
            # own expression (same headers, so mostly a typo guard).
            lines.append(
                f'  printf("dbg {name} %zu %zu\\n", '
                f'offsetof(_Py_DebugOffsets, {member}), (size_t)({init}));')
        lines.append('  printf("rt debug_offsets %zu\\n", '
                     'offsetof(_PyRuntimeState, debug_offsets));')
        for member in ("cookie", "version") + (("free_threaded",) if minor >= 14 else ()):
            lines.append(f'  printf("hdr {member} %zu\\n", '
                         f'offsetof(_Py_DebugOffsets, {member}));')
    lines += ["  return 0;", "}", ""]
    return "\n".join(lines)


# Runs inside the target interpreter: reads its own live structures through
# ctypes using the freshly computed offsets. Prints a JSON list of failures.
LIVE_CHECK = r'''
import ctypes, dis, json, sys, threading
o = json.loads(sys.argv[1]); dbg = json.loads(sys.argv[2]); minor = sys.version_info[1]
api = ctypes.pythonapi
api.PyThreadState_Get.restype = ctypes.c_void_p
api.PyInterpreterState_Get.restype = ctypes.c_void_p
api.PyThreadState_GetDict.restype = ctypes.c_void_p
ptr = lambda a: ctypes.c_void_p.from_address(a).value or 0
u64 = lambda a: ctypes.c_uint64.from_address(a).value
i32 = lambda a: ctypes.c_int.from_address(a).value
u8 = lambda a: ctypes.c_uint8.from_address(a).value
bad = []
def chk(what, got, want):
    if got != want:
        bad.append("%s: got %r want %r" % (what, got, want))

# The current-frame load itself must happen in the probing frame: a Python
# helper (even `ptr`) would push its own frame and we would read that one.
CF = o["layout"] == "CFrame"; VP = ctypes.c_void_p
# 3.14+: f_executable is a tagged _PyStackRef.
code_at = lambda fr: ptr(fr + o["frame_code"]) & ~o["stackref_tag_bits"]

def probe():
    me = sys._getframe(); caller = me.f_back
    ts = api.PyThreadState_Get(); interp = api.PyInterpreterState_Get()
    chk("tstate.interp", ptr(ts + o["tstate_interp"]), interp)
    chk("tstate.thread_id", u64(ts + o["tstate_thread_id"]), threading.get_ident())
    if minor >= 11:
        chk("tstate.native_thread_id", u64(ts + o["tstate_native_thread_id"]),
            threading.get_native_id())
    # Borrowed ref; creates the dict on first use, so it is never NULL here.
    d = api.PyThreadState_GetDict()
    chk("PyThreadState_GetDict() non-NULL", bool(d), True)
    chk("tstate.dict", ptr(ts + o["tstate_dict"]), d)
    f = VP.from_address(ptr(ts + o["tstate_frame"]) + o["cframe_current_frame"] if CF else ts + o["tstate_frame"]).value
    back = ptr(f + o["frame_back"])
    if o["layout"] == "FrameObject":
        chk("tstate.frame", f, id(me))
        chk("frame.f_back", back, id(caller))
        # 3.10 stores f_lasti in code units; Python exposes it in bytes.
        chk("frame.f_lasti", i32(back + o["frame_instr"]) * o["frame_lasti_unit"],
            caller.f_lasti)
    else:
        chk("frame.owner(thread)", u8(f + o["frame_owner"]), 0)
        # A thread-owned frame lies in the live part of the thread's current data-stack chunk.
        chunk = ptr(ts + o["tstate_datastack_chunk"])
        chk("frame in datastack", chunk + o["chunk_data"] <= f < ptr(ts + o["tstate_datastack_top"]), True)
        code_addr = code_at(back)
        base = code_addr + o["code_code_adaptive"]
        chk("frame.instr (caller lasti, bytes)",
            ptr(back + o["frame_instr"]) - base, caller.f_lasti)
        chk("code.co_code_adaptive", ctypes.string_at(base, len(caller.f_code._co_code_adaptive)),
            caller.f_code._co_code_adaptive)
        # Generator code has a prologue before RESUME, so the index is nonzero.
        for c in (caller.f_code, gen.__code__):
            first = next(i.offset // 2 for i in dis.get_instructions(c) if i.opname == "RESUME")
            chk("code._co_firsttraceable", i32(id(c) + o["code_firsttraceable"]), first)
            chk("RESUME opcode", c.co_code[2 * first], o["code_resume_opcode"])
        chk("firsttraceable nonzero for generators", i32(id(gen.__code__) + o["code_firsttraceable"]) > 0, True)
    chk("frame.code", code_at(f), id(me.f_code))
    chk("frame_back.code", code_at(back), id(caller.f_code))
    chk("code.co_firstlineno", i32(id(me.f_code) + o["code_firstlineno"]),
        me.f_code.co_firstlineno)
    return ts, interp, back

def gen():
    ts = api.PyThreadState_Get()
    f = VP.from_address(ptr(ts + o["tstate_frame"]) + o["cframe_current_frame"] if CF else ts + o["tstate_frame"]).value
    yield u8(f + o["frame_owner"])

def module_level():
    ts, interp, back = probe()
    # Thread list: head plus next links must contain every live thread.
    ev = threading.Event(); t = threading.Thread(target=ev.wait); t.start()
    seen, p = set(), ptr(interp + o["interp_tstate_head"])
    for _ in range(1000):  # bounded: a bad `next` offset may form a cycle
        if not p:
            break
        seen.add(u64(p + o["tstate_thread_id"])); p = ptr(p + o["tstate_next"])
    ev.set(); t.join()
    chk("interp thread list", {threading.get_ident(), t.ident} <= seen, True)
    if minor >= 11:
        chk("generator frame owner", next(gen()), 1)
    module = ptr(back + o["frame_back"])  # back = module_level(); below it the <string> module
    if o["frame_is_entry"] is not None:
        # 3.11: the module frame is the first its eval-loop run executed; module_level is not.
        chk("module frame is_entry", u8(module + o["frame_is_entry"]), 1)
        chk("function frame is_entry", u8(back + o["frame_is_entry"]), 0)
    if minor >= 12:
        # Below the module frame, the eval-loop entry shim pushed by _PyEval_EvalFrameDefault.
        shim = ptr(module + o["frame_back"])
        chk("entry shim owner", u8(shim + o["frame_owner"]), o["frame_owner_shim"])
        if minor >= 13:
            chk("entry shim f_executable is None", code_at(shim), id(None))
    if dbg:
        # Positions are within _PyRuntimeState, exactly as emitted for the extension.
        rt = ctypes.addressof(ctypes.c_char.in_dll(api, "_PyRuntime"))
        chk("debug_offsets cookie", ctypes.string_at(rt + dbg.pop("@cookie"), 8), b"xdebugpy")
        chk("debug_offsets version", u64(rt + dbg.pop("@version")), sys.hexversion)
        if "@free_threaded" in dbg:
            chk("debug_offsets free_threaded", u64(rt + dbg.pop("@free_threaded")), 0)
        for name, at in dbg.items():
            chk("_PyRuntime.debug_offsets for " + name, u64(rt + at), o[name])

module_level()
print(json.dumps(bad))
'''


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def interp_info(exe):
    code = ("import sys, sysconfig, json; print(json.dumps(["
            "list(sys.version_info[:3]), sysconfig.get_paths()['include'], "
            "sysconfig.get_config_var('Py_GIL_DISABLED'), sysconfig.get_platform(), "
            "sys.maxsize > 2**32]))")
    ver, inc, nogil, plat, is64 = json.loads(run([exe, "-c", code]))
    if nogil:
        sys.exit(f"{exe}: free-threaded build; only GIL builds are supported")
    if plat != "linux-x86_64" or not is64:
        sys.exit(f"{exe}: platform {plat}; only x86-64 Linux is supported")
    return tuple(ver), inc


def discover_pyenv():
    """Newest installed patch release per minor in MINORS, via pyenv."""
    if not shutil.which("pyenv"):
        sys.exit("pyenv not found; pass python executables explicitly")
    root = run(["pyenv", "root"]).strip()
    best = {}
    for name in run(["pyenv", "versions", "--bare"]).split():
        # Plain x.y.z only: skips -dev, t (free-threaded), virtualenvs, etc.
        m = re.fullmatch(r"3\.(\d+)\.(\d+)", name)
        if m and int(m.group(1)) in PYENV_MINORS:
            minor, patch = int(m.group(1)), int(m.group(2))
            if patch >= best.get(minor, (-1, ""))[0]:
                best[minor] = (patch, name)
    return [os.path.join(root, "versions", name, "bin", f"python3.{minor}")
            for minor, (_, name) in sorted(best.items())]


def collect(exe, workdir):
    ver, inc = interp_info(exe)
    minor = ver[1]
    src = os.path.join(workdir, f"off3{minor}.c")
    binp = os.path.join(workdir, f"off3{minor}")
    with open(src, "w") as f:
        f.write(c_source(minor))
    # Compile only, no -lpython: main() uses nothing but offsetof/sizeof and
    # enum constants, and unused static inline header functions emit no code.
    subprocess.run(["gcc", "-std=gnu11", "-O0", "-w", "-I", inc,
                    "-I", os.path.join(inc, "internal"), src, "-o", binp],
                   check=True)
    vals, enums, dbg, hdr, rt = {}, {}, {}, {}, None
    for line in run([binp]).splitlines():
        kind, name, *nums = line.split()
        if kind == "off":
            vals[name] = int(nums[0])
        elif kind == "enum":
            enums[name] = int(nums[0])
        elif kind == "dbg":
            at, init_val = int(nums[0]), int(nums[1])
            if init_val != vals[name]:
                sys.exit(f"3.{minor}: {name}: our {vals[name]} != "
                         f"_Py_DebugOffsets_INIT {init_val}")
            dbg[name] = at
        elif kind == "rt":
            rt = int(nums[0])
        elif kind == "hdr":
            hdr[name] = int(nums[0])
    # Make every debug-offsets position relative to _PyRuntimeState itself.
    if dbg:
        dbg = {name: rt + at for name, at in dbg.items()}
        dbg["@cookie"] = rt + hdr["cookie"]
        dbg["@version"] = rt + hdr["version"]
        if "free_threaded" in hdr:
            dbg["@free_threaded"] = rt + hdr["free_threaded"]
    off = {"major": ver[0], "minor": minor, "layout": layout_for(minor)}
    for name in FIELDS:
        off[name] = vals.get(name)
    off["frame_owner_shim"] = enums.get(shim_owner(minor))
    # Live cross-check inside the interpreter itself.
    # A wrong offset can just as well crash the child (bad pointer chase).
    p = subprocess.run([exe, "-c", LIVE_CHECK, json.dumps(off), json.dumps(dbg)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"3.{minor} live check crashed (rc {p.returncode}):\n{p.stderr}")
    bad = json.loads(p.stdout)
    if bad:
        sys.exit(f"3.{minor} live check failed:\n  " + "\n  ".join(bad))
    print(f"  {'.'.join(map(str, ver))}: {exe}: compiled, live-checked"
          + (f", matches _PyRuntime.debug_offsets ({sum(not k.startswith('@') for k in dbg)} fields)" if dbg else ""),
          flush=True)
    return ver, off, enums, dbg


def collect_anywhere(exe, workdir):
    """collect() on this machine, or for sid:NAME inside the sid root (scripts/sid-python)."""
    if not exe.startswith("sid:"):
        return collect(exe, workdir)
    name = exe[len("sid:"):]
    out = run([SID, name, os.path.relpath(__file__, REPO), "--collect", name], cwd=REPO)
    progress, _, result = out.rstrip("\n").rpartition("\n")
    print(progress, flush=True)
    ver, off, enums, dbg = json.loads(result)
    return tuple(ver), off, enums, dbg


def render(results):
    versions = ", ".join(".".join(map(str, v)) for v, _, _, _ in results)
    out = [
        "// @generated by scripts/gen_offsets.py -- DO NOT EDIT BY HAND.",
        f"// Source: CPython {versions} headers (GIL builds, x86-64 Linux),",
        "// measured with offsetof/sizeof and cross-checked against the live",
        "// interpreters. Regenerate: python3 scripts/gen_offsets.py",
        "// Included from offsets.rs via include!().",
        "",
    ]
    # The 3.11+ owner values other than CSTACK are identical everywhere they
    # exist; emit them once and refuse to if that ever stops being true.
    shared = {}
    for _, _, enums, _ in results:
        for name, val in enums.items():
            if name in ("FRAME_OWNED_BY_CSTACK", "FRAME_OWNED_BY_INTERPRETER"):
                continue  # per version, as frame_owner_shim
            if shared.setdefault(name, val) != val:
                sys.exit(f"{name} differs between versions; make it per-version")
    for name, val in sorted(shared.items(), key=lambda kv: kv[1]):
        out.append(f"/// `_PyInterpreterFrame.owner` value `{name}` (3.11+; same in all versions).")
        out.append("#[allow(dead_code)] // emitted for completeness; not every value is used")
        out.append(f"pub const {name}: u8 = {val};")
    out.append("")
    names = []
    for ver, off, _, _ in results:
        cname = f"PY{ver[0]}_{ver[1]}"
        names.append(cname)
        out.append(f"/// Offsets measured from CPython {'.'.join(map(str, ver))}.")
        out.append(f"pub const {cname}: Offsets = Offsets {{")
        out.append(f"    major: {off['major']},")
        out.append(f"    minor: {off['minor']},")
        out.append(f"    layout: FrameLayout::{off['layout']},")
        for name in FIELDS:
            v = off[name]
            out.append(f"    {name}: {'usize::MAX' if v is None else v},")
        shim = off["frame_owner_shim"]
        out.append(f"    frame_owner_shim: {255 if shim is None else shim},")
        out.append("};")
        out.append("")
    out.append("/// Every generated table, oldest first.")
    out.append(f"pub const ALL: [Offsets; {len(names)}] = [{', '.join(names)}];")
    out.append("")
    arms = []
    for ver, _, _, dbg in results:
        if not dbg:
            continue
        cname = f"DEBUG_OFFSETS_PY{ver[0]}_{ver[1]}"
        arms.append(f"        {ver[1]} => Some({cname}),")
        out.append(f"/// Positions within `_PyRuntimeState` of CPython {'.'.join(map(str, ver))}'s")
        out.append("/// `_PyRuntime.debug_offsets` cookie, version and the entries matching our fields.")
        out.append(f"pub const {cname}: DebugOffsetsLayout = DebugOffsetsLayout {{")
        out.append(f"    cookie: {dbg['@cookie']},")
        out.append(f"    version: {dbg['@version']},")
        out.append(f"    free_threaded: {dbg.get('@free_threaded', 'usize::MAX')},")
        out.append("    checks: &[")
        for name in debug_checks(ver[1]):
            out.append(f'        ("{name}", {dbg[name]}),')
        out.append("    ],")
        out.append("};")
        out.append("")
    out.append("/// The `_PyRuntime.debug_offsets` layout for 3.<minor>, if that version has one (3.13+).")
    out.append("pub const fn debug_offsets_layout(minor: u8) -> Option<DebugOffsetsLayout> {")
    out.append("    match minor {")
    out += arms
    out.append("        _ => None,")
    out.append("    }")
    out.append("}")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true",
                    help="regenerate in memory; exit 1 if the file differs")
    ap.add_argument("--collect", action="store_true",
                    help="measure the one interpreter given and print the result as JSON")
    ap.add_argument("pythons", nargs="*",
                    help="python executables; sid:NAME runs NAME in the sid root "
                         "(default: pyenv's newest 3.9..3.13, sid:python3.14, sid:python3.15)")
    args = ap.parse_args()
    if not shutil.which("gcc"):
        sys.exit("gcc not found")
    if args.collect:
        (exe,) = args.pythons
        with tempfile.TemporaryDirectory(prefix="gen_offsets.") as tmp:
            print(json.dumps(collect(exe, tmp)))
        return 0
    exes = args.pythons or discover_pyenv() + [
        f"sid:python3.{minor}" for minor in MINORS if minor not in PYENV_MINORS]

    print(f"gen_offsets: {len(exes)} interpreter(s)", flush=True)
    with tempfile.TemporaryDirectory(prefix="gen_offsets.") as tmp:
        results = [collect_anywhere(exe, tmp) for exe in exes]
    results.sort(key=lambda r: r[0])
    got = [r[0][1] for r in results]
    # The Rust side names PY3_9..PY3_15 directly; a partial file would break it.
    if got != list(MINORS):
        sys.exit(f"need exactly one interpreter per minor 3.{MINORS[0]}..3.{MINORS[-1]}, got "
                 + ", ".join(f"3.{m}" for m in got))
    text = render(results)

    rel = os.path.relpath(OUT, REPO)
    if args.check:
        old = open(OUT).read() if os.path.exists(OUT) else ""
        if old != text:
            sys.stdout.writelines(difflib.unified_diff(
                old.splitlines(True), text.splitlines(True), rel, rel + " (regenerated)"))
            print(f"gen_offsets: {rel} is out of date")
            return 1
        print(f"gen_offsets: {rel} is up to date")
        return 0
    with open(OUT, "w") as f:
        f.write(text)
    print(f"gen_offsets: wrote {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

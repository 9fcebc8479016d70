"""mkdocs hook (mkdocs.yml): publish the repository's files that the pages link to outside docs/.

The pages are written to be read on GitHub too, so they link scripts, sources and shipped
figures by their relative paths (`../scripts/ensemble_gap.py`, `../saved_models/.../x.png`).
mkdocs only knows the files under docs/; this adds each such linked file to the site under
`repository/` (`repository/scripts/ensemble_gap.py`), so that the links and images resolve in
the built site as they do on GitHub, and `mkdocs build --strict` still fails on a link to a
file that does not exist.
"""
from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File, Files, InclusionLevel

LINK = re.compile(r"\]\((\.\.?/[^)\s#]+)")


def on_files(files: Files, config) -> Files:
    docs = Path(config.docs_dir).resolve()
    for page in list(files.documentation_pages()):
        for target in LINK.findall(page.content_string):
            src_uri = posixpath.normpath(posixpath.join(posixpath.dirname(page.src_uri), target))
            path = (docs / src_uri).resolve()
            if (not src_uri.startswith("../") or files.get_file_from_path(src_uri) is not None
                    or not path.is_file() or docs.parent not in path.parents):
                continue  # inside docs/, already added, or not a file: mkdocs judges the link
            file = File.generated(config, src_uri, abs_src_path=str(path),
                                  inclusion=InclusionLevel.INCLUDED)
            file.dest_uri = "repository/" + path.relative_to(docs.parent).as_posix()
            files.append(file)
    return files

"""The docs: the bundle's page (bundle/docs/README.md) follows the MONAI model zoo's template
(docs/readme_template.md of Project-MONAI/model-zoo) and points at nothing outside the bundle, since the
bundle ships alone; the project handbook (docs/README.md) and its companions keep every relative link
working."""

import os
import re

from conftest import BUNDLE_ROOT, REPO_ROOT

BUNDLE_DOCS = os.path.join(BUNDLE_ROOT, "docs", "README.md")
HANDBOOK_PAGES = [os.path.join(REPO_ROOT, "docs", name) for name in ("README.md", "training_experiments.md")]

#: the zoo template's sections, in its order (the template misspells "Additional"; the zoo's READMEs do not)
TEMPLATE_HEADERS = [
    "# ISCL low-dose CT denoising",
    "### **Authors**",
    "### **Tags**",
    "## **Model Description**",
    "## **Data**",
    "#### **Preprocessing**",
    "## **Performance**",
    "## **Additional Usage Steps**",
    "## **System Configuration**",
    "## **Limitations**",
    "## **Citation Info**",
    "## **References**",
]

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE_CODE = re.compile(r"`([^`\n]+)`")
#: a path that leaves the bundle: one of the repository's other folders, or two levels up
OUTSIDE = re.compile(r"(?<![\w.~/-])(bundle|tests|integrations|benchmark)/|\.\./\.\.")
#: a bundle-relative path naming a file the bundle must hold
BUNDLE_FILE = re.compile(r"^(configs/[\w./-]+\.json|scripts/[\w./-]+\.py|models/[\w./-]+\.\w+|sample/[\w./-]+\.\w+)$")


def read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def relative_links(text: str) -> list:
    """The targets of the page's Markdown links and images that are not web addresses or in-page anchors."""
    targets = [t for t in LINK.findall(text) if not re.match(r"^[a-z]+:", t) and not t.startswith("#")]
    return [t.split("#", 1)[0] for t in targets]


def code_tokens(text: str) -> list:
    """Every word inside inline code spans and fenced blocks, quotes, brackets and commas stripped; the word
    after ``--filepath`` (an output the command writes) left out."""
    spans = FENCE.findall(text) + INLINE_CODE.findall(FENCE.sub("", text))
    tokens = []
    for span in spans:
        words = re.split(r"[\s\"'\[\],()]+", span)
        tokens += [w for i, w in enumerate(words) if w and not (i and words[i - 1] == "--filepath")]
    return tokens


def test_the_bundle_page_has_the_zoo_templates_sections_once_each_in_order():
    lines = read(BUNDLE_DOCS).splitlines()
    outside_code = []
    fenced = False
    for line in lines:
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            outside_code.append(line.rstrip())
    for header in TEMPLATE_HEADERS:
        assert outside_code.count(header) == 1, f"{header!r} should appear exactly once"
    positions = [outside_code.index(header) for header in TEMPLATE_HEADERS]
    assert positions == sorted(positions), "the template's sections are out of order"
    assert outside_code[0] == TEMPLATE_HEADERS[0], "the page starts with the model's title"
    # nothing but the template's own sections at levels 1 and 2 (extra sections go in at ####)
    top_levels = [l for l in outside_code if re.match(r"^#{1,3} ", l)]
    assert top_levels == [h for h in TEMPLATE_HEADERS if not h.startswith("####")], top_levels


def test_the_bundle_pages_links_resolve_to_files_inside_the_bundle():
    text = read(BUNDLE_DOCS)
    targets = relative_links(text)
    assert targets, "the page links its data licence"
    bundle = os.path.realpath(BUNDLE_ROOT)
    for target in targets:
        path = os.path.realpath(os.path.join(os.path.dirname(BUNDLE_DOCS), target))
        assert os.path.commonpath([bundle, path]) == bundle, f"{target} leaves the bundle"
        assert os.path.isfile(path), f"{target} does not exist"


def test_the_bundle_page_names_no_path_outside_the_bundle():
    text = read(BUNDLE_DOCS)
    for target in relative_links(text):
        assert not OUTSIDE.search(target), target
    for token in code_tokens(text):
        assert not OUTSIDE.search(token), f"`{token}` points outside the bundle"
    # and not in the prose either
    prose = INLINE_CODE.sub("", FENCE.sub("", text))
    found = [m.group(0) for m in OUTSIDE.finditer(LINK.sub("", prose))]
    assert not found, found


def test_the_bundle_files_the_page_names_exist():
    tokens = [t.split("::")[0] for t in code_tokens(read(BUNDLE_DOCS))]
    named = sorted({t for t in tokens if BUNDLE_FILE.match(t)})
    assert "configs/inference.json" in named and "models/model.pt" in named, named
    missing = [t for t in named if not os.path.isfile(os.path.join(BUNDLE_ROOT, t))]
    assert not missing, f"named by bundle/docs/README.md but not in the bundle: {missing}"


def test_the_handbooks_relative_links_resolve():
    for page in HANDBOOK_PAGES:
        targets = relative_links(read(page))
        missing = [t for t in targets if not os.path.exists(os.path.join(os.path.dirname(page), t))]
        assert not missing, f"{os.path.relpath(page, REPO_ROOT)}: broken links {missing}"
    assert "../bundle/docs/README.md" in relative_links(read(HANDBOOK_PAGES[0])), "the handbook points at the bundle's page"


def test_no_shipped_markdown_names_a_path_outside_the_bundle():
    """Every Markdown file that ships with the bundle (not its local work folders) stays inside it too."""
    pages = []
    for folder, dirs, files in os.walk(BUNDLE_ROOT):
        dirs[:] = [d for d in dirs if d not in ("cache", "runs", "eval", "__pycache__")]
        pages += [os.path.join(folder, f) for f in files if f.endswith(".md")]
    assert BUNDLE_DOCS in pages and len(pages) >= 2, pages
    for page in pages:
        found = [m.group(0) for m in OUTSIDE.finditer(read(page))]
        assert not found, f"{os.path.relpath(page, BUNDLE_ROOT)}: {found}"

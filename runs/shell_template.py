"""Template values in shell scripts travel as environment variables, never as code.

Quoting a value and pasting it into the script (shlex.quote) is not enough: inside an
unquoted heredoc the shell still expands `$(...)` in the pasted text, and inside double
quotes the added single quotes show up in the output. So before a script template is
compiled, each `{{ expr }}` is rewritten, according to the shell quoting context it stands
in, into a reference to a fresh variable (`"${STEPWISE_V1}"` outside quotes, `${STEPWISE_V1}`
inside double quotes or a heredoc, `'"${STEPWISE_V1}"'` inside single quotes), and the value
goes into the step's environment. Expansion results are never parsed again by the shell, so
a value is always data.

No library tracks bash quoting contexts inside a Jinja template, hence this small lexer. It
understands quotes, `$'...'`, backticks, `$(...)`, comments and heredocs; anything it does
not model falls back to the safest form for its context.

Bash evaluates a variable's text again as an arithmetic expression wherever it expects a
number, and there `a[$(cmd)]` runs cmd (as does a variable name whose value holds that).
So where a value would be evaluated arithmetically, only a plain number may go: in `$((...))`,
`((...))` and `$[...]`, after `let`, in the operands of `[[ ... ]]`'s `-eq`, `-ne`, `-lt`,
`-le`, `-gt`, `-ge` and `-v`, in an array subscript `${name[...]}` or `name[...]=`
(unless the script declares `name` associative), in a substring's offset and length
`${name:offset:length}`, and in the value assigned to a variable the script declares an
integer (`declare -i n=...`, or `n=...` after it).
"""

import re
from dataclasses import dataclass, field

_RAW = re.compile(r"\{%-?\s*raw\s*-?%\}.*?\{%-?\s*endraw\s*-?%\}", re.DOTALL)
_EXPRESSION = re.compile(r"\{\{.*?\}\}", re.DOTALL)
# Operators of `[[ ]]` whose operands bash evaluates as arithmetic (or, -v, as a variable
# name, subscript included).
_ARITHMETIC_TEST = re.compile(r"-(eq|ne|lt|le|gt|ge|v)")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_QUOTES = ("double", "single", "ansi")
# Frames that only matter for arithmetic: for quoting, a value in them stands as in the
# context around them.
_TRANSPARENT = ("param", "param-name", "assoc-subscript", "cond")
_WORD_START = " \t\n;&|(!"
# An assignment word, `name=`, `name+=` or `name[...]=`, read in the flat source.
_ASSIGNMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(\[[^\]\n]*\])?\+?=")
_DECLARATION = re.compile(r"\b(?:declare|local|typeset)[ \t]+([^;&|\n]*)")
_HEREDOC = re.compile(r"<<(-?)[ \t]*(?:'([^'\n]*)'|\"([^\"\n]*)\"|\\?([A-Za-z0-9_.-]+))")


@dataclass
class _Heredoc:
    delimiter: str
    quoted: bool
    strip_tabs: bool


@dataclass
class _Lexer:
    source: str
    out: list[str] = field(default_factory=list)
    stack: list[str] = field(default_factory=lambda: ["code"])
    pending: list[_Heredoc] = field(default_factory=list)
    i: int = 0
    # The source with every `{{ }}` made one word, for looking at the words around one.
    flat: str = ""

    # Variables the script declares integers anywhere: bash evaluates what is assigned to
    # them as arithmetic.
    integers: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.flat = _EXPRESSION.sub(lambda m: "x" * len(m.group(0)), self.source)
        for declaration in _DECLARATION.finditer(self.flat):
            words = declaration.group(1).split()
            flags = "".join(word for word in words if word.startswith("-") and word != "--")
            if "i" in flags:
                self.integers |= {
                    name.group(0) for word in words if (name := _NAME.match(word)) is not None
                }

    def associative(self, name: str) -> bool:
        """Whether the script declares `name` an associative array (`declare -A name`,
        `local -gA a name=(...)`): its subscripts are strings, not arithmetic."""
        return bool(
            re.search(
                r"\b(?:declare|local|typeset)[ \t]+(?:-\w+[ \t]+)*-[a-zA-Z]*A[a-zA-Z]*"
                r"[ \t]+(?:[^\s;&|]+[ \t]+)*?" + re.escape(name) + r"\b",
                self.source,
            )
        )

    def rewrite(self) -> str:
        while self.i < len(self.source):
            if self.jinja():
                continue
            self.char()
        return "".join(self.out)

    # Jinja syntax is copied through; `{{ }}` gets the filter for the current context.
    def jinja(self, context: str | None = None) -> bool:
        source, i = self.source, self.i
        if source.startswith("{{", i):
            end = source.find("}}", i + 2)
            if end < 0:
                return False
            inner = source[i + 2 : end]
            left = "-" if inner.startswith("-") else ""
            right = "-" if inner.endswith("-") else ""
            expression = inner[len(left) : len(inner) - len(right)]
            context = context or self.context(i, end + 2)
            self.out.append(f"{{{{{left} ({expression}) | {filter_call(context)} {right}}}}}")
            self.i = end + 2
            return True
        raw = _RAW.match(source, i)
        if raw:
            self.out.append(raw.group(0))
            self.i = raw.end()
            return True
        for opening, closing in (("{%", "%}"), ("{#", "#}")):
            if source.startswith(opening, i):
                end = source.find(closing, i + 2)
                if end < 0:
                    return False
                self.out.append(source[i : end + 2])
                self.i = end + 2
                return True
        return False

    def context(self, start: int, end: int) -> str:
        """How the `{{ }}` at source[start:end] must be written, from the frames around it."""
        for frame in reversed(self.stack):
            if frame in _QUOTES or frame in ("param", "param-name", "assoc-subscript"):
                continue
            if frame in ARITHMETIC or (frame == "cond" and self.arithmetic_operand(start, end)):
                return "arith"
            break
        return next(frame for frame in reversed(self.stack) if frame not in _TRANSPARENT)

    def arithmetic_operand(self, start: int, end: int) -> bool:
        """Whether the word holding source[start:end] is an operand of `-eq` and the like."""
        flat, left, right = self.flat, start, end
        while left > 0 and flat[left - 1] not in " \t\n":
            left -= 1
        while right < len(flat) and flat[right] not in " \t\n":
            right += 1
        before = flat[:left].split()[-1:]
        after = flat[right:].split()[:1]
        return any(_ARITHMETIC_TEST.fullmatch(word) for word in before + after)

    def take(self, count: int = 1) -> str:
        text = self.source[self.i : self.i + count]
        self.out.append(text)
        self.i += count
        return text

    def char(self) -> None:
        source, i, context = self.source, self.i, self.stack[-1]
        c = source[i]
        if context == "single":
            if c == "'":
                self.stack.pop()
            self.take()
        elif context == "ansi":
            if c == "\\":
                self.take(2)
                return
            if c == "'":
                self.stack.pop()
            self.take()
        elif context in ("double", "expanding-heredoc"):
            if c == "\\":
                self.take(2)
            elif c == '"' and context == "double":
                self.stack.pop()
                self.take()
            elif source.startswith("$((", i):
                self.stack.append("arith")
                self.take(3)
            elif source.startswith("$(", i):
                self.stack.append("sub")
                self.take(2)
            elif c == "`":
                self.stack.append("tick")
                self.take()
            elif self.expansion():
                pass
            else:
                self.take()
        elif context == "arith-paren":
            if c == ")":
                self.stack.pop()
            elif c == "(":
                self.stack.append("arith-paren")
            self.take()
        elif context in ("subscript", "arith-square"):
            if c == "]":
                self.stack.pop()
            elif c == "[":
                self.stack.append(context)
            self.take()
        elif context == "param-name":
            self.param_name_char(c)
        elif context == "offset":
            if c == "}":
                self.stack.pop()  # the offset
                self.stack.pop()  # the expansion
            self.take()
        elif (context == "let" and c in ";\n&|)") or (context == "integer" and c in " \t;\n&|)"):
            self.stack.pop()
            self.code_char(c)
        elif context in ("param", "assoc-subscript") and c == ("}" if context == "param" else "]"):
            self.stack.pop()
            self.take()
        else:
            self.code_char(c)

    def expansion(self) -> bool:
        """`${...}` and `$[...]`, in code or in double quotes."""
        source, i = self.source, self.i
        if source.startswith("$[", i):
            self.stack.append("arith-square")
            self.take(2)
            return True
        if source.startswith("${", i) and not source.startswith("${{", i):
            self.stack.append("param-name")
            self.take(2)
            return True
        return False

    def param_name_char(self, c: str) -> None:
        """In `${`, before the operator: a subscript and a substring's offset are arithmetic."""
        source, i = self.source, self.i
        name = _NAME.match(source, i)
        if name:
            self.take(name.end() - i)
            if source.startswith("[", self.i):
                associative = self.associative(name.group(0))
                self.stack.append("assoc-subscript" if associative else "subscript")
                self.take()
            return
        if c == ":" and source[i + 1 : i + 2] not in ("-", "=", "+", "?"):
            self.stack[-1] = "param"
            self.stack.append("offset")
            self.take()
        elif c == "}":
            self.stack.pop()
            self.take()
        else:
            self.stack[-1] = "param"
            self.char()

    def code_char(self, c: str) -> None:
        source, i, context = self.source, self.i, self.stack[-1]
        at_word_start = i == 0 or source[i - 1] in _WORD_START
        if context == "arith":
            self.arith_char(c)
        elif c == "\\":
            self.take(2)
        elif self.expansion():
            pass
        elif context == "cond" and source.startswith("]]", i):
            self.stack.pop()
            self.take(2)
        elif context == "cond" and c in "()":
            self.take()  # grouping inside [[ ]], not a subshell
        elif source.startswith("[[", i) and at_word_start:
            self.stack.append("cond")
            self.take(2)
        elif (
            context in ("code", "sub", "tick")
            and at_word_start
            and re.match(r"let[ \t]", source[i : i + 4])
        ):
            self.stack.append("let")
            self.take(3)
        elif (
            context in ("code", "sub", "tick")
            and at_word_start
            and (assignment := _ASSIGNMENT.match(self.flat, i))
        ):
            self.assignment(assignment)
        elif source.startswith("$((", i) or (
            source.startswith("((", i) and (i == 0 or source[i - 1] in " \t\n;&|")
        ):
            # Arithmetic: `<<` there is a shift, not a heredoc.
            self.stack.append("arith")
            self.take(3 if c == "$" else 2)
        elif c == "'":
            self.stack.append("single")
            self.take()
        elif source.startswith("$'", i):
            self.stack.append("ansi")
            self.take(2)
        elif c == '"':
            self.stack.append("double")
            self.take()
        elif c == "`":
            if context == "tick":
                self.stack.pop()
            else:
                self.stack.append("tick")
            self.take()
        elif c == "(":
            self.stack.append("sub")
            self.take()
        elif c == ")":
            if context == "sub":
                self.stack.pop()
            self.take()
        elif c == "#" and (i == 0 or source[i - 1] in " \t\n;&|("):
            self.comment()
        elif source.startswith("<<", i) and not source.startswith("<<<", i):
            self.heredoc_operator()
        elif c == "\n":
            self.take()
            for heredoc in self.pending:
                self.heredoc_body(heredoc)
            self.pending.clear()
        else:
            self.take()

    def assignment(self, word: re.Match) -> None:
        """`name[...]=`: the subscript is arithmetic. `name=` where `name` is an integer: so
        is the value, to the end of the word."""
        name, subscript = word.group(1), word.group(2)
        self.take(len(name))
        if subscript:
            self.stack.append("assoc-subscript" if self.associative(name) else "subscript")
            self.take()
        elif name in self.integers:
            self.take(word.end() - self.i)
            self.stack.append("integer")

    def arith_char(self, c: str) -> None:
        if self.source.startswith("))", self.i):
            self.stack.pop()
            self.take(2)
        elif c == "(":
            self.stack.append("arith-paren")
            self.take()
        else:
            self.take()

    def comment(self) -> None:
        while self.i < len(self.source) and self.source[self.i] != "\n":
            if not self.jinja():
                self.take()

    def heredoc_operator(self) -> None:
        match = _HEREDOC.match(self.source, self.i)
        if match is None:
            self.take(2)
            return
        delimiter = match.group(2) or match.group(3) or match.group(4) or ""
        quoted = match.group(4) is None or self.source[match.start() :].lstrip("<-").lstrip(
            " \t"
        ).startswith("\\")
        self.pending.append(_Heredoc(delimiter, quoted, bool(match.group(1))))
        self.take(match.end() - self.i)

    def heredoc_body(self, heredoc: _Heredoc) -> None:
        # A quoted heredoc expands nothing; an unquoted one expands as double quotes do
        # (`$((...))` and `${a[...]}` included), so it gets a frame the lexer walks through.
        quoted = f"heredoc:{heredoc.delimiter}" if heredoc.quoted else None
        depth = len(self.stack)
        if quoted is None:
            self.stack.append("expanding-heredoc")
        while self.i < len(self.source):
            end = self.source.find("\n", self.i)
            end = len(self.source) if end < 0 else end
            line = self.source[self.i : end]
            if (line.lstrip("\t") if heredoc.strip_tabs else line) == heredoc.delimiter:
                self.take(end - self.i)
                break
            while self.i < end:
                if self.jinja(quoted):
                    pass
                elif quoted is None:
                    self.char()
                else:
                    self.take()
                end = max(end, self.i)
            if self.i < len(self.source):
                self.take()  # the newline
        del self.stack[depth:]


def filter_call(context: str) -> str:
    if context.startswith("heredoc:"):
        delimiter = context.split(":", 1)[1].replace("\\", "\\\\").replace("'", "\\'")
        return f"stepwise_shell('heredoc', '{delimiter}')"
    return f"stepwise_shell('{context}')"


def rewrite(source: str) -> str:
    """The template with every `{{ expr }}` routed through the `stepwise_shell` filter."""
    return _Lexer(source).rewrite()


# How a variable is referenced in each context. Code contexts need the double quotes so the
# value stays one word; inside double quotes or an expanding heredoc the bare reference is
# already literal; single-quoted text is closed, the quoted reference added, and reopened.
# Bash evaluates a variable's text again inside arithmetic (`a[$(cmd)]` runs cmd), so there
# only plain numbers are allowed, checked by the filter.
ARITHMETIC = ("arith", "arith-paren", "arith-square", "subscript", "offset", "let", "integer")

REFERENCE = {
    "code": '"${{{name}}}"',
    "sub": '"${{{name}}}"',
    "tick": '"${{{name}}}"',
    "double": "${{{name}}}",
    "expanding-heredoc": "${{{name}}}",
    "single": "'\"${{{name}}}\"'",
    "ansi": "'\"${{{name}}}\"$'",
}

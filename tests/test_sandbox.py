"""An operator's template is bounded: it cannot reach Python objects, change the values it is
given, run for ever, or build a huge value, whatever it writes. Each attack fails as that
template's fault, quickly, with the sandbox's reason."""

from __future__ import annotations

import time
from datetime import date
from pathlib import Path

import pytest

from digest_mailer.errors import RenderError
from digest_mailer.preflight import sample_digest
from digest_mailer.render import Renderer
from digest_mailer.sandbox import Sandbox

ATTACKS = {
    # time
    "nested loops": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
                    "{% endfor %}",
    "loops over a string": "{% set s = 'x' * 99999 %}{% for a in s %}{% for b in s %}"
                           "{% endfor %}{% endfor %}",
    "branching macro": "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}"
                       "{% endmacro %}{{ f(40) }}",
    # memory, in one call
    "ljust": "{{ 'x'.ljust(1000000000) }}",
    "center filter": "{{ 'x'|center(1000000000) }}",
    "format width": "{{ '{:>999999999}'.format(1) }}",
    "format filter star": "{{ '%*s'|format(1000000000, 'x') }}",
    "percent width": "{{ '%0999999999d' % 1 }}",
    "replace": "{{ ('x' * 99999)|replace('', 'y' * 99999) }}",
    "str.replace": "{{ ('x' * 99999).replace('', 'y' * 99999) }}",
    "indent": "{{ ('\\n' * 99999)|indent(99999) }}",
    "join of a generator": "{{ range(100000)|map('string')|join('y' * 9999) }}",
    "join of references": "{% set a = 'x' * 99999 %}{% set b = [a, a, a, a, a, a, a, a, a, a] %}"
                          "{{ [b, b, b, b, b, b]|map('join')|join }}",
    "join with a long separator": "{{ range(100000)|join('y' * 99) }}",
    "translate": "{{ ('x' * 99999).translate({120: 'y' * 9999}) }}",
    "expandtabs": "{{ ('x\t' * 49999).expandtabs(99999) }}",
    "wordwrap": "{{ ('a' * 99999)|wordwrap(1, true, 'y' * 999) }}",
    "power": "{{ (10 ** 64) ** 64 }}",
    # memory, step by step
    "doubling with ~": "{% set ns = namespace(s='x' * 1000) %}{% for i in range(40) %}"
                       "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
    "doubling with +": "{% set ns = namespace(s='x' * 1000) %}{% for i in range(40) %}"
                       "{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s|length }}",
    "squaring": "{% set ns = namespace(x=10 ** 60) %}{% for i in range(40) %}"
                "{% set ns.x = ns.x * ns.x %}{% endfor %}",
    "nested references printed": "{% set a = 'x' * 99999 %}{% set b = [a, a, a, a, a, a, a, a, "
                                 "a, a] %}{% set c = [b, b, b, b, b, b, b, b, b, b] %}{{ c }}",
    "captured output": "{% set s = 'y' * 99999 %}{% set x %}{% for i in range(100000) %}{{ s }}"
                       "{% endfor %}{% endset %}{{ x|length }}",
    "static text in loops": "{% set x %}{% for i in range(100000) %}{% for j in range(1000) %}"
                            + "x" * 64 + "{% endfor %}{% endfor %}{% endset %}{{ x|length }}",
    # reaching Python or mutating what the renderer gave
    "list.append": "{{ papers.append(1) }}",
    "dict.update": "{% set d = {} %}{{ d.update(a=1) }}",
}


def render_custom(tmp_path: Path, text: str) -> None:
    folder = tmp_path / "tpl"
    folder.mkdir(exist_ok=True)
    (folder / "digest.txt.j2").write_text(text + "\n")
    renderer = Renderer(folder)
    from digest_mailer.config import parse_config

    config = parse_config({"newsletter": {"from": "P <p@example.org>"},
                           "unsubscribe": {"url": "https://x.example.org/u/{token}"}},
                          name="c.toml", base_dir=tmp_path)
    renderer.render(sample_digest(config, date(2025, 6, 2)))


@pytest.mark.parametrize("attack", list(ATTACKS.values()), ids=list(ATTACKS))
def test_an_operator_template_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         attack: str) -> None:
    monkeypatch.setattr(Sandbox, "SECONDS", 2.0)
    started = time.monotonic()
    with pytest.raises(RenderError) as e:
        render_custom(tmp_path, attack)
    assert time.monotonic() - started < 30  # the 2 s deadline, on a loaded machine
    assert str(tmp_path / "tpl" / "digest.txt.j2") in e.value.message
    assert "SecurityError" in e.value.message, e.value.message  # the bound, not MemoryError


def test_lipsum_is_gone(tmp_path: Path) -> None:
    """Random text: no shared rendering could ever equal it; and it made text of any size."""
    with pytest.raises(RenderError, match="'lipsum' is undefined"):
        render_custom(tmp_path, "{{ lipsum(n=1000000) }}")


def test_what_templates_do_every_day_still_works(tmp_path: Path) -> None:
    render_custom(tmp_path, "{% for p in papers %}{{ loop.index }}. {{ p.title|upper|center(90) }}"
                            "{{ p.title ~ '!' ~ 1 }}{% endfor %}{{ '%s-%05d'|format('a', 42) }} "
                            "{{ '{:,}'.format(1234567) }} {{ 1234567890|filesizeformat }} "
                            "{{ (range(1000)|map('string')|join(', '))|length }} "
                            "{{ ('ab' * 1000)|replace('a', 'xyz')|length }} {{ 2 ** 64 }}")


def test_long_text_through_filters_that_take_the_environment(tmp_path: Path) -> None:
    """wordwrap, truncate (the environment) and join (the evaluation context) on text of a
    few hundred thousand characters: what Jinja passes them first is not a size."""
    render_custom(tmp_path, "{% set w = 'word ' * 20000 %}{% set s = w ~ w ~ w %}"
                            "{{ s|wordwrap(72)|length }} "
                            "{{ s|truncate(100) }} {{ [s, s]|join(' ')|length }} "
                            "{{ s|indent(2)|length }} {{ s|upper|length }}")


def test_a_large_template_compiles_in_linear_time(tmp_path: Path) -> None:
    """60,000 `~`: each was put in place by a walk over the whole tree (a minute of CPU)."""
    started = time.monotonic()
    render_custom(tmp_path, "{{ 'a' ~ 'b' }}\n" * 60_000)
    assert time.monotonic() - started < 30

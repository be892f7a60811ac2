"""The Java-free METEOR's parts against pycocoevalcap's jar: ``-norm`` normalisation, the Snowball stems, the
matches the aligner chooses, the jar's statistics and scores of an alignment, and the data cache.

The jar is run once per module in its plaintext mode with ``-writeAlignments``, which prints each pair's normalised
words, the matches it chose and the score; pairs are real captions (COCO val2017, Flickr8k, SentiCap: first caption
against the second, raw, so that ``-norm`` has work) and crafted lines.
"""

from __future__ import annotations

import gzip
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from _java import require_java, require_pycocoevalcap
from _meteor_cases import caption_groups
from captionkit.evaluation.external import MetricUnavailable
from captionkit.evaluation.meteor import resources
from captionkit.evaluation.meteor.align import align
from captionkit.evaluation.meteor.matching import Match, Matcher
from captionkit.evaluation.meteor.normalize import normalize
from captionkit.evaluation.meteor.resources import load_meteor_data, phrase_key, word_hash
from captionkit.evaluation.meteor.scoring import Stats, alignment_stats, corpus_score

CRAFTED = [
    ("A man's dog, \"running\" (fast) -- at 5:30 p.m. in the U.S.A. on Mr. Smith's t-shirt!", "a dog runs fast"),
    ("It's 3.5 km/h; isn't it? Yes... 1,000 people & cats @home #tag $5.00 50% off.", "it is fast"),
    ("Dr. Who won't go... e.g. the end. Mr. Bean. i.e. no", "the end"),
    ("The CAT'S  hats' don't   can't I'm we're they've he'd she'll X. Y. Z", "the cat's hat"),
    ("<tag> &amp; a&b a-b a--b a/b it\u2019s \u201cquoted\u201d \u2014 dash", "a b"),
    ("st. t.v. 3/4 12:43 & # ground.a 11.01.2009 w. ky. rd. ho'ohu p-51 close-up n't 's", "a close up tv"),
    ("No. 5 and no. 5 and No 5 Art. 3 Mr. jones Dr. Smith went. He ran.", "he runs"),
    ("U.S. army a.b.c. ok. Fine x.y i.e U.S", "the us army"),
    ("he said 'hello' to ''them'' and `this` 5-4 -5 5- a- -a 'tis rock'n'roll o'clock", "he said hello"),
    ("three carved jack-o-lanterns \u2026 end\u2026 5.5. $5 5,5 ,a a, .a a..b a...b", "three jack o lanterns"),
    ("a big dog runs", "a large dog ran"),
    ("dog a runs big", "a large dog ran"),
    ("the the the", "the cat"),
    ("...", "a dog"),
    ("dog", "a dog"),
    ("a dog a dog a dog", "a dog"),
    ("a man riding a horse", "a man riding a horse"),
    ("he runs fast", "he runs quickly"),
]


@dataclass
class JarPair:
    test: list[str]
    ref: list[str]
    matches: list[Match]
    score: float


def real_pairs(limit: int) -> list[tuple[str, str]]:
    return [(g[0], g[1]) for groups in caption_groups(limit).values() for g in groups]


@dataclass
class JarRun:
    pairs: list[tuple[str, str, JarPair]]  # test line, reference line, what the jar made of them
    corpus: float


@pytest.fixture(scope="module")
def jar_run(tmp_path_factory: pytest.TempPathFactory) -> JarRun:
    require_pycocoevalcap()  # the jar and the METEOR data come from it
    require_java()
    jar, _ = resources.source_files()
    pairs = CRAFTED + real_pairs(150)
    folder = tmp_path_factory.mktemp("meteor-jar")
    (folder / "test.txt").write_text("".join(t + "\n" for t, _ in pairs), encoding="utf-8")
    (folder / "ref.txt").write_text("".join(r + "\n" for _, r in pairs), encoding="utf-8")
    command = ["java", "-Xmx2G", "-jar", str(jar), "test.txt", "ref.txt", "-l", "en", "-norm", "-writeAlignments"]
    done = subprocess.run([*command, "-f", "out"], cwd=folder, capture_output=True, check=True, timeout=300)
    parsed = _parse_alignments((folder / "out-align.out").read_text(encoding="utf-8"))
    assert len(parsed) == len(pairs)
    corpus = float(done.stdout.decode().split("Final score:")[1].split()[0])
    return JarRun([(t, r, p) for (t, r), p in zip(pairs, parsed, strict=True)], corpus)


def _parse_alignments(text: str) -> list[JarPair]:
    out = []
    for block in text.split("Alignment\t")[1:]:
        lines = [line for line in block.split("\n") if line.strip()]
        matches = []
        for row in lines[4:]:
            ref_span, test_span, stage = row.split()[:3]
            (start2, length2), (start1, length1) = (map(int, s.split(":")) for s in (ref_span, test_span))
            matches.append(Match(int(stage), start1, length1, start2, length2))
        matches.sort(key=lambda m: m.start1)
        out.append(JarPair(lines[1].split(" "), lines[2].split(" "), matches, float(lines[0].split("\t")[-1])))
    return out


@pytest.fixture(scope="module")
def prefixes() -> dict[str, int]:
    require_pycocoevalcap()
    jar, _ = resources.source_files()
    with zipfile.ZipFile(jar) as archive:
        return resources._prefixes(archive.read("nonbreaking/english.prefixes").decode("utf-8"))


def test_normalize_equals_the_jar(jar_run: JarRun, prefixes: dict[str, int]) -> None:
    assert len(jar_run.pairs) > 300
    for test, ref, pair in jar_run.pairs:
        assert normalize(test, prefixes) == pair.test, test
        assert normalize(ref, prefixes) == pair.ref, ref


def test_aligner_chooses_the_jars_matches(jar_run: JarRun) -> None:
    matcher = Matcher(load_meteor_data())
    pairs = [words for _, _, pair in jar_run.pairs for words in (pair.test, pair.ref)]
    sentences = matcher.prepare(pairs, [k // 2 for k in range(len(pairs))])
    chose_stages = set()
    for k, (_, _, pair) in enumerate(jar_run.pairs):
        test, ref = sentences[2 * k], sentences[2 * k + 1]
        chosen = align(matcher.matches(test, ref), len(test.words))
        assert sorted(chosen) == sorted(pair.matches), (pair.test, pair.ref)
        chose_stages.update(m.stage for m in chosen)
    assert chose_stages == {0, 1, 2, 3}


def test_alignment_scores_equal_the_jar(jar_run: JarRun) -> None:
    function_words = frozenset(
        zipfile.ZipFile(resources.source_files()[0]).read("function/english.words").decode("utf-8").split()
    )
    segments = []
    for _, _, pair in jar_run.pairs:
        flags = [w in function_words for w in pair.test], [w in function_words for w in pair.ref]
        segments.append(alignment_stats(*flags, sorted(pair.matches, key=lambda m: m.start2)))
        assert abs(segments[-1].score() - pair.score) < 1e-12, (pair.test, pair.ref)
    assert sum(s.whole for s in segments) >= 2  # identical lines, whose chunk the corpus score does not count
    assert abs(corpus_score(segments) - jar_run.corpus) < 1e-12


def test_scores_from_the_jars_statistic_lines() -> None:
    # SCORE lines and scores the jar answered (-stdio -l en -norm) for "a man riding a horse" against "a man is
    # riding a horse", "the the the" against "the cat", and "a man" against itself.
    zeros = " 0.0" * 12
    lines = {
        f"5.0 6.0 2.0 3.0 3.0 3.0 2.0 2.0{zeros} 2.0 5.0 5.0": 0.4645695216158345,
        f"3.0 2.0 3.0 1.0 0.0 0.0 1.0 1.0{zeros} 1.0 1.0 1.0": 0.10389610389610389,
        f"2.0 2.0 1.0 1.0 1.0 1.0 1.0 1.0{zeros} 1.0 2.0 2.0": 1.0,
    }
    for line, score in lines.items():
        assert abs(Stats.parse(line).score() - score) < 1e-12
    # EVAL of the first line and the third (whole: its chunk is not counted) answered 0.5043952760908179.
    first, _, third = (Stats.parse(line) for line in lines)
    assert abs(corpus_score([first, third]) - 0.5043952760908179) < 1e-12


def test_stems_are_the_jars_snowball_english() -> None:
    import snowballstemmer

    stem = snowballstemmer.stemmer("english").stemWord
    # The jar's org.tartarus.snowball englishStemmer on words that Snowball 3 stems differently.
    observed = {"evening": "even", "university": "univers", "added": "ad", "paste": "past", "organized": "organ"}
    assert {word: stem(word) for word in observed} == observed


@pytest.fixture()
def fake_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    jar, table = tmp_path / "meteor-1.5.jar", tmp_path / "paraphrase-en.gz"
    with zipfile.ZipFile(jar, "w") as archive:
        archive.writestr("function/english.words", "the\na\nof\n")
        archive.writestr("nonbreaking/english.prefixes", "# comment\nMr\nNo #NUMERIC_ONLY#\n")
        archive.writestr("synonym/english.exceptions", "run\nran running\nmouse\nmice\n")
        archive.writestr("synonym/english.synsets", "big\n01 02\nlarge\n02 03\n")
    with gzip.open(table, "wt", encoding="utf-8") as out:
        out.write("0.5\nfast\nquickly\n0.25\na dog\nthe hound\n")
    monkeypatch.setattr(resources, "source_files", lambda: (jar, table))
    return jar, table


def test_cache_is_built_once_and_answers_lookups(
    fake_install: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = load_meteor_data(tmp_path / "cache")
    (folder,) = (tmp_path / "cache").iterdir()
    assert capsys.readouterr().err == f"METEOR: building its data cache in {folder} (once; about 30 s)\n"
    assert data.function_words == {"the", "a", "of"}
    assert data.prefixes == {"Mr": 1, "No": 2}
    assert data.exceptions == {"ran": ["run"], "running": ["run"], "mice": ["mouse"]}
    assert data.synsets.lookup(word_hash("large")).tolist() == [2, 3]
    assert data.synsets.lookup(word_hash("small")).tolist() == []
    table = data.paraphrases
    assert table.records.lookup(word_hash("fast")).tolist() == [0]
    assert table.records.lookup(word_hash("quickly")).tolist() == []  # the table is directed
    (record,) = table.records.lookup(phrase_key([word_hash("a"), word_hash("dog")])).tolist()
    assert (int(table.targets[record]), int(table.target_lengths[record])) == (
        phrase_key(map(word_hash, ["the", "hound"])),
        2,
    )
    assert table.longest == 2
    built = (folder / "meta.json").stat().st_mtime_ns
    load_meteor_data(tmp_path / "cache")
    assert (folder / "meta.json").stat().st_mtime_ns == built
    assert capsys.readouterr().err == ""  # a built cache is loaded without a word
    assert not list(folder.glob("*.pkl")) and sorted(p.suffix for p in folder.iterdir()) == [".json"] + [".npy"] * 8


def test_cache_follows_the_installed_files(fake_install: tuple[Path, Path], tmp_path: Path) -> None:
    jar, table = fake_install
    before = resources.cache_dir(jar, table, tmp_path)
    with gzip.open(table, "wt", encoding="utf-8") as out:
        out.write("0.5\nfast\nrapid\n")
    assert resources.cache_dir(jar, table, tmp_path) != before


def test_without_snowballstemmer_the_message_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "snowballstemmer", None)  # importing it raises ImportError
    with pytest.raises(MetricUnavailable) as error:
        Matcher(load_meteor_data())
    assert str(error.value) == ("METEOR needs snowballstemmer: install the extra (pip install 'captionkit[meteor]')")


def test_without_pycocoevalcap_the_message_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resources, "pycocoevalcap_dir", lambda: None)
    with pytest.raises(MetricUnavailable) as error:
        resources.source_files()
    assert str(error.value) == (
        "METEOR needs pycocoevalcap's data files: install the extra (pip install 'captionkit[meteor]')"
    )

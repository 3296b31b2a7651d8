"""A small heuristic parser for the opening of an instruction: its leading verb and the verb's object
("Write a short poem about rain" -> ("write", "poem")), the analysis Self-Instruct (Wang et al. 2023,
fig. 2) makes with a constituency parser. Here a word list stands in for the parser: no model, no
download. An opening whose first word is not a known imperative verb has no verb (questions such as
"What is ..." included)."""

from __future__ import annotations

from ift.builtin_plugins.cleaning.text import instruction_words

IMPERATIVE_VERBS = frozenset(
    """
add adapt address adjust analyze analyse annotate answer apply argue arrange ask assess assign assume
break brainstorm build calculate categorize categorise change check choose cite clarify classify clean
combine come compare compile complete compose compute conclude condense construct continue convert correct
count craft create critique decide decode define delete derive describe design detect determine develop
devise diagnose discuss distinguish divide do draft draw edit elaborate eliminate encode enumerate estimate
evaluate examine expand explain explore express extract fill filter find finish fix follow form format
formulate gather generalize generate give group guess help highlight identify illustrate imagine implement
improve include indicate infer insert interpret introduce invent investigate judge justify keep label
link list locate make map mark match measure mention merge modify multiply name note number obtain offer
organize organise outline output paraphrase pick plan play point predict prepare present pretend produce
proofread propose provide put rank rate read reason recommend reconstruct recreate reduce refactor
reformulate remove rename reorder rephrase replace reply report represent request resolve respond
restate restructure retrieve return reverse review revise rewrite say score select separate share shorten
show simplify solve sort specify spell split state suggest summarize summarise supply swap take talk teach
tell test think trace transform translate turn type underline use validate verify visualize write
""".split()
)

# words between a verb and its object that are not the object
_SKIPPED = frozenset(
    """
a an the this that these those some any each every all my your our their his her its me us him them
one two three four five six seven eight nine ten few several many more most another other following given
short brief long new simple detailed good great creative funny main best different possible unique
interesting catchy formal informal persuasive concise complete appropriate suitable original random sample
single small large quick basic key top similar specific famous popular common important useful proper
correct clear compelling engaging brand own entire whole
""".split()
)
# words that end the search: the verb takes a clause or a phrase, not a noun object
_STOPS = frozenset(
    """
of for about to in on with from into that which how what why whether if when where who whose by at as
and or but than then so not out up down over between through without
""".split()
)


def leading_verb(instruction: str) -> tuple[str | None, str | None]:
    """(verb, object) of an instruction's opening; either may be None."""
    tokens = instruction_words(instruction)
    if not tokens or tokens[0] not in IMPERATIVE_VERBS:
        return None, None
    for token in tokens[1:6]:
        if token in _STOPS:
            break
        if token in _SKIPPED or token.isdigit():
            continue
        if token.isalpha():
            return tokens[0], token
        break
    return tokens[0], None

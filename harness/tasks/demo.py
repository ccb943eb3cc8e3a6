"""Demo task: customer support-ticket triage into one line of JSON.

A deterministic (by seed), project-written generator of email-like support tickets and their
triage answers. It is the harness's default dataset: hard enough that techniques and
hyperparameters separate (a small model needs to read, classify, extract and normalise),
while every answer follows from the ticket by a fixed rule, so exact match is meaningful.

Run it to see samples (tests: ``pytest tests/test_demo_data.py``)::

    python -m harness.tasks.demo [SEED]

Answer schema (keys in this order, one line of JSON)::

    {"category": ..., "priority": ..., "product": ..., "order_id": ..., "amount": ..., "date": ...}

- category: billing | refund | shipping | technical | account | cancellation | feedback.
  The subject line names the problem in most tickets ("Double charge", "Where is my
  parcel?"); the rest have a vague subject ("Help", "Question about X") and the category is
  implied only by the problem description, where category words appear solely as traps in
  another category ("charged the shipping fee" is billing, "this billing period" cancellation).
- priority: low | medium | high | urgent, by the rule below.
- product: the product the ticket is about, as named (a second product may be mentioned in
  passing), or null when the ticket names none.
- order_id: ``ORD-`` + 6 digits, normalised from forms such as ``ord-482913``, ``#482913``,
  ``482-913`` or ``No. 482913``; null when absent. Customer, case, invoice and phone numbers
  and error codes are distractors.
- amount: the USD amount as a number (``$1,299.00``, ``1299 dollars``, ``USD 45.50`` and
  ``12 dollars and 5 cents`` are all written forms); null when absent.
- date: the date of the event the ticket is about (order, charge, delivery, failure) as
  YYYY-MM-DD; written forms include ``March 3rd``, ``03/14/2026`` (always month first),
  ``14 Mar 2026`` and relative ones (``yesterday``, ``3 days ago``, ``a week ago``) that count
  back from the ticket's header date. A date without a year is in the header's year. The
  header date itself is not the answer: null when the body mentions no date.

Priority rule (INSTRUCTION states it in one sentence; which sentences are signals is learnt):

- feedback tickets are always ``low``;
- otherwise ``urgent`` if work or business is blocked (the team cannot work, sales are lost);
- otherwise ``low``, one level up (``medium``, ``high``) for each of: the customer names a
  deadline; this is a repeat contact (earlier emails, calls, a case number, a quoted reply).

The customer's own urgency words ("URGENT!!", "ASAP", "no rush") do not count: triage teams
do not trust self-rated urgency, and it keeps the label from hanging on one keyword. Nor do
the header's plan tier (Enterprise included) or the amount.

Held-out generalisation: every pool (brands, customer names, companies, and each phrasing
slot) is split by position, every ``HOLDOUT_EVERY``-th item held out (pools of fewer items,
such as the phrasings of "2 days ago", are shared). Train and val draw only
from the rest. Test draws products and people only from the held-out part, and each phrasing
slot from the held-out part with probability ``TEST_HELDOUT_P``. Each split has its own
``random.Random`` seeded by the string ``f"{seed}:{split}"``, so the test split does not change
with ``n_train``.
"""

from __future__ import annotations

import json
import math
import random
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from functools import cache
from pathlib import Path
from typing import Any

# The generator's output version: part of every demo run's config hash (data.dataset_fingerprint).
# Bump it with any change that alters a generated row; tests/test_demo_data.py pins the output
# of VERSION, so forgetting fails there. Comments and refactors that keep the rows keep it.
VERSION = 1

FIELDS = ("category", "priority", "product", "order_id", "amount", "date")
CATEGORIES = ("billing", "refund", "shipping", "technical", "account", "cancellation", "feedback")
PRIORITIES = ("low", "medium", "high", "urgent")

# States the schema, the allowed values and the priority rule in one sentence, the way a
# triage team's prompt would; which sentences count as blocked work, a deadline or a repeat
# contact is still learnt from the rows (the customer's own urgency words do not count).
INSTRUCTION = (
    "Triage the support ticket. Reply with one line of JSON with keys in this order: "
    "category (billing, refund, shipping, technical, account, cancellation or feedback), "
    "priority (low, medium, high or urgent), product, order_id (ORD- and 6 digits), "
    "amount (USD number), date (YYYY-MM-DD of the event, not of the email). "
    "Use null for anything absent. Priority: feedback is low; blocked work is urgent; "
    "otherwise low, one level up for a deadline and one for a repeat contact."
)

# Difficulty knobs. Raising TEST_HELDOUT_P, P_RELATIVE_DATE or P_CUSTOMER_NO makes the test
# split harder (more unseen phrasings, more date arithmetic, more id distractors).
HOLDOUT_EVERY = 4  # every 4th pool item is test-only
TEST_HELDOUT_P = 0.35  # chance a test phrasing slot draws from the held-out part
P_RELATIVE_DATE = 0.1  # chance a recent date is written relative ("2 days ago")
P_CUSTOMER_NO = 0.25  # chance the header carries a 6-digit customer number (a distractor)
P_OTHER_PRODUCT = 0.12  # chance a second product is mentioned in passing
P_CUE_SUBJECT = 0.9  # chance the subject line names the problem (else a vague subject)
MIN_WORDS, MAX_WORDS = 40, 120
SPLITS = ("train", "val", "test")

# ---------------------------------------------------------------------------------------
# Pools. Everything below was written for this project. Order matters: it decides which
# items are held out, so append new items at the end of a pool.
# ---------------------------------------------------------------------------------------

BRANDS = (
    "Aurevo", "Brisa", "Cindral", "Dunmore", "Elvora", "Fennick", "Gallor", "Hesper",
    "Istra", "Jovane", "Kestrel", "Lunaro", "Merrow", "Nimbra", "Orsolo", "Pellar",
    "Quillon", "Rovana", "Sablo", "Tessly", "Umbrin", "Veltro", "Wrenfield", "Xandor",
    "Yarrow", "Zephra", "Coralin", "Torvik",
)  # fmt: skip
DEVICE_TYPES = (
    "Blender", "Air Fryer", "Kettle", "Robot Vacuum", "Thermostat", "Earbuds", "Headphones",
    "Router", "Webcam", "Standing Desk", "Office Chair", "Espresso Machine", "Fitness Tracker",
    "Tablet", "Monitor", "Keyboard", "Security Camera", "Toothbrush", "Speaker", "Drone",
)  # fmt: skip
MODEL_TAGS = (
    "", "Pro", "Mini", "X2", "S", "Max", "Lite", "300", "Go", "Plus", "One", "Duo", "2", "Air",
)  # fmt: skip
SERVICES = (
    "Cloud Backup", "Drive", "VPN", "Vault", "Stream+", "Planner", "Books", "Fit Premium",
    "Music", "Photos", "Meet", "Mail Pro", "Notes", "Invoicer",
)  # fmt: skip

FIRST_NAMES = (
    "Maria", "James", "Aiko", "Daniel", "Fatima", "Lukas", "Priya", "Owen", "Sofia", "Mateo",
    "Hannah", "Kwame", "Elena", "Ravi", "Chloe", "Tomas", "Leila", "Noah", "Ingrid", "Samuel",
    "Yuki", "Grace", "Andrei", "Nadia", "Felix", "Amara", "Jonas", "Rosa", "Marcus", "Ana",
    "Victor", "Mei", "Oscar", "Zara", "Hugo", "Lena", "Diego", "Alice", "Tariq", "Ruth",
)  # fmt: skip
LAST_NAMES = (
    "Lopez", "Carter", "Tanaka", "Novak", "Haddad", "Becker", "Sharma", "Walsh", "Rossi",
    "Garcia", "Klein", "Mensah", "Petrova", "Iyer", "Dubois", "Silva", "Nasser", "Brooks",
    "Lindqvist", "Okafor", "Sato", "Murphy", "Popescu", "Farouk", "Wagner", "Adeyemi",
    "Jensen", "Moreno", "Hughes", "Costa", "Kowalski", "Chen", "Larsen", "Ali", "Fischer",
    "Ramos", "Baker", "Nguyen", "Hussain", "Weiss",
)  # fmt: skip
COMPANIES = (
    "Harbor Bakery", "Linden Dental", "Northgate Logistics", "Blue Fern Studio", "Pine & Co",
    "Greywater Legal", "Sunrise Physio", "Atlas Print Shop", "Maple Street Cafe", "Orbit Labs",
    "Riverside Vets", "Copperleaf Design", "Kite Travel", "Hillcrest School", "Meadow Farms",
    "Quarry Architects", "Willow Clinic", "Beacon Tutors", "Redbrick Books", "Tidewater Marine",
)  # fmt: skip
TITLES = (
    "Office Manager", "Owner", "IT Lead", "Operations", "Head of Finance", "Practice Manager",
    "Founder", "Team Assistant", "Procurement", "Store Manager", "Director", "Accountant",
)  # fmt: skip
EMAIL_DOMAINS = ("mailbox.test", "example.com", "post.example", "inbox.test", "example.org")

# How a product is referred to, by mention style; {x} is the product name.
MENTIONS = {
    "device": ("the {x}", "my {x}", "our {x}", "the {x} I bought", "the {x} I ordered", "this {x}"),
    "plan": ("my {x} subscription", "our {x} plan", "the {x} subscription", "my {x} membership",
             "our {x} account plan", "my {x} plan"),
    "app": ("the {x} app", "{x}", "our {x} workspace", "the {x} service", "{x} on my laptop",
            "my {x} app"),
    "account": ("my {x} account", "our {x} team account", "the {x} account", "my {x} user account",
                "our {x} admin account", "my {x} profile"),
}  # fmt: skip
# The same slots when the ticket names no product.
GENERIC = {
    "device": ("my order", "the item", "my purchase", "the thing I ordered"),
    "plan": ("my subscription", "our plan", "my membership", "the subscription"),
    "app": ("the app", "your service", "the software", "your app"),
    "account": ("my account", "our team account", "my profile", "the account"),
}

# Problem statements: category -> product kind -> templates. {p} is the product mention.
PROBLEMS: dict[str, dict[str, tuple[str, ...]]] = {
    "billing": {
        "device": (
            "I was charged twice for {p}.",
            "The invoice for {p} shows a higher price than the one on your website.",
            "My card statement has a payment for {p} that I never authorised.",
            "The discount code I used on {p} was not applied to the total.",
            "You took the money for {p} from the wrong card.",
            "The receipt for {p} lists the sales tax twice.",
            "My bank shows two identical payments for {p}, one pending and one settled.",
            "The amount taken for {p} does not match my order confirmation.",
            "I need a corrected invoice for {p} with our company tax number on it.",
            "I was charged in euros for {p} and my bank added conversion fees.",
            "The price of {p} dropped the day after I paid, and the price match was never applied.",
            "Your checkout charged the shipping fee for {p} even though it said free delivery.",
        ),
        "service": (
            "I was billed for the yearly version of {p} although I picked monthly.",
            "The price of {p} went up on my statement without any notice.",
            "There are two charges this month for {p}.",
            "My statement shows a charge for {p} even though I prepaid the whole year.",
            "The invoice for {p} is addressed to the wrong company.",
            "The promotional price for {p} stopped after one month instead of six.",
            "I keep getting payment failed emails for {p} although the card is fine.",
            "We were charged for ten seats on {p} but we only have four users.",
            "The charge for {p} came from a different card than the one on file.",
            "The tax on the last invoice for {p} was calculated for the wrong country.",
        ),
    },
    "refund": {
        "device": (
            "I sent {p} back two weeks ago and still don't have my money.",
            "{p} is not what the listing described, so I'd like to return it for my money back.",
            "The return of {p} was confirmed, but the credit never reached my card.",
            "I changed my mind about {p} and want to send it back for the full price.",
            "Only part of what I paid for {p} came back after the return.",
            "Your policy says I'd be reimbursed once {p} was back in your warehouse. Where is it?",
            "{p} arrived scratched; I don't want a replacement, just my money back.",
            "The parcel with {p} reached your returns centre but I have not been reimbursed.",
            "I'd like to return {p} unopened and be paid back.",
            "Can I still get my money back for {p}? I'm within the 30-day window.",
            "Your returns page says money for {p} comes back in 5 days; it's been much longer.",
            "The reimbursement for {p} went to a card I closed last year.",
            "{p} doesn't suit us; how do I send it back and get reimbursed?",
            "Please reverse the payment for {p}, I already shipped it back to you.",
            "I returned {p} in its original box and only got store credit instead of my money.",
            "{p} was a gift that wasn't wanted, and I'd like the purchase price returned.",
        ),
    },
    "shipping": {
        "device": (
            "{p} still hasn't arrived.",
            "The tracking for {p} has said in transit for over a week.",
            "The courier marked {p} as delivered but there is nothing at my door.",
            "{p} was sent to my old address.",
            "I received someone else's parcel instead of {p}.",
            "The box with {p} showed up crushed, so could you send another one?",
            "{p} is stuck at customs and nobody tells me why.",
            "Only half my parcel arrived; {p} was missing from the box.",
            "The delivery window for {p} was missed twice.",
            "I paid for express delivery on {p} and it's slower than standard.",
            "The tracking number you gave me for {p} doesn't work on the carrier's website.",
            "Can you change the delivery address for {p}? It hasn't left the warehouse yet.",
            "{p} was left with a neighbour I have never met.",
            "Your warehouse says {p} went out, but the carrier says they never got it.",
            "{p} came without the cable and charger that should be in the box.",
            "The parcel with {p} was sent back to you without any delivery attempt.",
        ),
    },
    "technical": {
        "device": (
            "{p} won't turn on anymore.",
            "{p} keeps dropping the wifi connection every few minutes.",
            "{p} shows error E{code} and then restarts.",
            "After the last firmware update {p} gets stuck while starting up.",
            "{p} makes a loud grinding noise.",
            "The screen on {p} flickers all the time.",
            "{p} will not pair with my phone anymore.",
            "The battery in {p} is empty after less than an hour.",
            "{p} overheats after a few minutes of use.",
            "The buttons on {p} stopped responding.",
            "{p} switches itself off at random.",
            "The companion app can't find {p} on the network.",
        ),
        "service": (
            "{p} crashes every time I export a file.",
            "Sync in {p} has been stuck at 99% for hours.",
            "{p} shows a blank white page after the latest update.",
            "Files I upload to {p} come out corrupted.",
            "{p} is extremely slow; every click takes a minute.",
            "{p} throws error code {code} when I try to save.",
            "Notifications from {p} stopped arriving on every device.",
            "{p} duplicates every entry I create.",
            "Search in {p} returns nothing, even for items I can see.",
            "{p} freezes whenever I open the settings page.",
        ),
    },
    "account": {
        "service": (
            "I can't log in to {p}; it says my password is wrong even after a reset.",
            "The password reset link for {p} never arrives.",
            "I need to change the email address on {p}.",
            "{p} got locked after too many login attempts.",
            "Someone changed the password on {p}, and it wasn't me.",
            "The two-factor code for {p} never shows up on my phone.",
            "{p} says it is suspended but nobody told me why.",
            "I'd like to add a colleague as an admin on {p}.",
            "I can't remove my old phone number from {p}.",
            "The name shown on {p} is someone else's.",
            "I get a session expired message every time I open {p}.",
            "I signed up for {p} with a typo in my email and can't verify it.",
            "The verification email for {p} goes to an address I no longer use.",
            "I was signed out of {p} on all devices and now my login is rejected.",
            "I have two separate logins and want them merged into {p}.",
            "The security questions on {p} don't accept my answers anymore.",
        ),
    },
    "cancellation": {
        "device": (
            "I ordered {p} by mistake, please stop the order before it ships.",
            "Please call off my order for {p}; I found it cheaper elsewhere.",
            "I no longer want {p}. It hasn't shipped yet, so please void the order.",
            "Please withdraw my purchase of {p} before it's dispatched.",
            "I placed the order for {p} twice by accident; please drop the second one.",
            "We don't need {p} anymore, please don't send it.",
            "Can you still stop {p} from going out? I changed my plans.",
            "Please take {p} off my order, it hasn't been packed yet.",
        ),
        "service": (
            "I'd like to end {p} at the close of this billing period.",
            "Please make sure {p} does not renew next month.",
            "I no longer need {p}; please close it.",
            "How do I stop {p}? I can't find the option in the settings.",
            "I want to terminate {p} effective immediately.",
            "I'm moving abroad and won't use {p} anymore, so please end it.",
            "Can you stop {p} before the next renewal?",
            "I don't want {p} to continue after the trial.",
            "We're downsizing and need to drop {p} for the whole team.",
            "I've decided to discontinue {p}; please confirm in writing.",
        ),
    },
    "feedback": {
        "device": (
            "Just wanted to say {p} is great; the new design is much easier to use.",
            "{p} works well but the manual is confusing.",
            "I love {p}, though the packaging felt wasteful.",
            "A suggestion: let buyers choose the colour of {p} at checkout.",
            "{p} is fine, but I'd like a quieter mode.",
            "Compliments to whoever designed {p}.",
            "I've used {p} for a month and it has exceeded my expectations.",
            "The setup guide for {p} could use more pictures.",
            "I wish {p} came in a smaller size.",
            "{p} is good value; a carrying case would make it perfect.",
        ),
        "service": (
            "It would be nice if {p} had a dark mode.",
            "Please consider adding a weekly summary to {p}.",
            "Not a complaint, just an idea: a family option for {p} would be useful.",
            "{p} is good value, but the colours are hard to read.",
            "The new layout of {p} is a big improvement, well done.",
            "Could {p} get keyboard shortcuts? It would save me time.",
            "{p} has become part of my daily routine, thank you.",
            "A small wish for {p}: let me export to spreadsheets.",
        ),
    },
}

# Which product kinds each category uses, and how the product is mentioned for each.
KINDS = {
    "billing": ("device", "service"),
    "refund": ("device",),
    "shipping": ("device",),
    "technical": ("device", "device", "service"),
    "account": ("service",),
    "cancellation": ("device", "service", "service"),
    "feedback": ("device", "service"),
}
STYLE = {
    ("billing", "service"): "plan",
    ("cancellation", "service"): "plan",
    ("technical", "service"): "app",
    ("feedback", "service"): "app",
    ("account", "service"): "account",
}
# Chance a field is present, by category: what such a ticket usually carries.
P_NO_PRODUCT = {"billing": 0.15, "refund": 0.08, "shipping": 0.08, "technical": 0.08,
                "account": 0.3, "cancellation": 0.1, "feedback": 0.25}  # fmt: skip
P_ORDER = {"billing": 0.55, "refund": 0.85, "shipping": 0.9, "technical": 0.35,
           "account": 0.1, "cancellation": 0.5, "feedback": 0.15}  # fmt: skip
P_AMOUNT = {"billing": 0.85, "refund": 0.8, "shipping": 0.25, "technical": 0.2,
            "account": 0.1, "cancellation": 0.4, "feedback": 0.1}  # fmt: skip
P_DATE = 0.6
BLOCKABLE = ("billing", "shipping", "technical", "account")  # where "blocked" makes sense
P_BLOCKED, P_DEADLINE, P_REPEAT, P_ENTERPRISE = 0.25, 0.3, 0.3, 0.25

# Date sentences, by category; {when} is "on March 3rd" or "yesterday".
DATE_LINES = {
    "billing": ("The charge showed up {when}.", "I was charged {when}.",
                "The payment went out {when}.", "I noticed it on my statement {when}.",
                "The invoice is dated {when}."),
    "refund": ("I sent it back {when}.", "Your warehouse received the return {when}.",
               "I bought it {when}.", "The return was confirmed {when}.",
               "I dropped the parcel at the post office {when}."),
    "shipping": ("I ordered it {when}.", "It was supposed to arrive {when}.",
                 "It shipped {when}.", "The tracking stopped updating {when}.",
                 "The courier came {when}."),
    "technical": ("It started {when}.", "This began {when}.", "It last worked properly {when}.",
                  "The problem first appeared {when}.", "I installed the update {when}."),
    "account": ("This started {when}.", "I last managed to sign in {when}.",
                "I requested the reset {when}.", "It was locked {when}.",
                "I noticed the change {when}."),
    "cancellation": ("I placed the order {when}.", "The last payment went through {when}.",
                     "I set this up {when}.", "The order went in {when}.",
                     "I made the purchase {when}."),
    "feedback": ("I got it {when}.", "I started using it {when}.",
                 "I set it up {when}.", "It was delivered {when}.",
                 "I first tried it {when}."),
}  # fmt: skip
ORDER_LINES = (
    "My order number is {oid}.", "Order: {oid}", "It was order {oid}.", "Reference {oid}.",
    "The order ID is {oid}.", "This is about order {oid}.", "Order ref {oid}, if that helps.",
    "You'll find it under order {oid}.", "(order {oid})", "Order number {oid} for your records.",
    "It's on order {oid}.", "Relevant order: {oid}.",
)  # fmt: skip
AMOUNT_LINES = (
    "I paid {amt}.", "The total was {amt}.", "It cost {amt}.", "The charge was {amt}.",
    "Amount: {amt}", "That's {amt} of my money.", "We're talking about {amt} here.",
    "The order came to {amt}.", "It was {amt} in total.", "The sum involved is {amt}.",
    "I spent {amt} on it.", "{amt} was taken from my account.",
)  # fmt: skip
INVOICE_LINES = ("See invoice {inv}.", "It's on invoice {inv}.", "Invoice number: {inv}",
                 "The invoice ({inv}) is attached.", "Our invoice ref is {inv}.")  # fmt: skip
# Order number written without an "order" word, so the line must supply it.
ORDER_FORMS = ("ORD-{d}", "ord-{d}", "ORD{d}", "ORD {d}", "#{d}", "{a}-{b}", "ORD/{d}", "No. {d}")

BLOCKED = (
    "Our whole team is stuck until this is sorted.", "This has brought our business to a halt.",
    "We can't serve any customers while this lasts.", "Right now none of our staff can work.",
    "We are losing sales every hour this goes on.", "Production is completely stopped on our side.",
    "Our online shop is effectively down because of this.",
    "Nobody in the office can get anything done.", "I can't do my job at all until it's fixed.",
    "Our restaurant can't take orders while this lasts.",
    "Forty people are sitting idle because of this.", "Our clinic can't see patients like this.",
)  # fmt: skip
DEADLINE = (
    "I need this sorted before Friday.",
    "We have an audit at the end of the week and need it resolved by then.",
    "I'm travelling on Monday and need it settled before I leave.",
    "Please fix it by tomorrow, we have a launch.",
    "It has to be settled before our board meeting on Thursday.",
    "I need an answer before the end of the month.", "The event it's for is this weekend.",
    "This must be done before our financial year closes next week.",
    "My deadline for this is in two days.", "We go live next Tuesday and can't without this.",
    "I need it resolved before my guests arrive on Saturday.", "Our trade fair opens on Wednesday.",
)  # fmt: skip
REPEAT = (
    "This is the third time I'm writing about this.",
    "I already reported this last week (case {case}) and heard nothing.",
    "I called your hotline twice already.",
    "I've been going back and forth with your team for days.",
    "Your colleague promised a callback that never came.",
    "Nobody answered my previous two emails.",
    "I opened ticket {case} about this already.",
    "Still no solution after my earlier chat with your agent.",
    "Writing again since my last message was ignored.",
    "My earlier complaint, case {case}, was closed without a fix.",
    "See your reply below; nothing has happened since.\n"
    "> Thanks for reaching out, we are looking into it.\n> Support team",
    "I spoke to someone on the phone on Monday about this already.",
)  # fmt: skip
# The customer's own urgency words: noise for the priority rule (see the module docstring).
SELF_URGENCY = (
    "Please reply ASAP!!", "URGENT!!", "This is very frustrating.", "Please hurry.",
    "I hope to hear back soon.", "No rush, whenever you get a chance.", "Really annoyed right now.",
    "Please treat this as top priority!", "Please escalate this immediately.",
    "This needs attention right away!", "Honestly, I'm losing patience.", "Take your time.",
)  # fmt: skip
GREETINGS = (
    "Hi,", "Hello,", "Dear support team,", "Hey there,", "Good morning,",
    "To whom it may concern,", "Hi team,", "Hello support,", "Dear Sir or Madam,",
    "Good afternoon,", "Hi folks,", "Greetings,", "Hello there,", "Dear customer care,",
    "Hiya,", "Morning,",
)  # fmt: skip
CONTEXT = (
    "I've been a customer for {n} years.", "I'm writing on behalf of {company}.",
    "I hope you're well.", "Quick one from me.", "I'm writing for a relative who avoids email.",
    "We use your products across the office.", "I found this address on your website.",
    "First time contacting you.", "My colleague suggested I write to you.",
    "I'm the admin for our small team.", "Long-time fan of your stuff.",
    "Hope this is the right place for this.",
)  # fmt: skip
REQUESTS = (
    "Can you look into it?", "Please advise.", "What are my options?",
    "Let me know what you need from me.", "Could someone get back to me?",
    "How do we fix this?", "Please let me know the next steps.", "Any help is appreciated.",
    "What should I do now?", "Please confirm once it's handled.", "I look forward to your reply.",
    "Can you help?",
)  # fmt: skip
NOISE = (
    "Hope your week is going well.", "Sorry for the long message.",
    "By the way, your website looks nice after the redesign.",
    "I'm writing from my phone, sorry for typos.", "Love the new logo, by the way.",
    "It's been raining here all week, which doesn't help.", "Thanks in advance.",
    "Apologies if this is the wrong inbox.", "My son helped me write this.",
    "I've attached nothing, as I couldn't find the upload button.",
    "Happy holidays to the team.", "I read the FAQ first but it did not cover this.",
)  # fmt: skip
OTHER_PRODUCT = (
    "My {other} from you works perfectly, so this is a surprise.",
    "I also ordered the {other}, which is fine.",
    "Unlike my {other}, this one has been trouble.",
    "For comparison, the {other} I have never had this issue.",
)  # fmt: skip
SIGNOFFS = (
    "Thanks,\n{first}", "Best regards,\n{first} {last}", "Cheers, {first}", "- {first}",
    "Kind regards,\n{first} {last}", "Thank you,\n{first} {last}", "Regards, {first}",
    "Many thanks,\n{first}", "All the best,\n{first} {last}", "Sincerely,\n{first} {last}",
    "Thx\n{first}", "Warm wishes,\n{first}",
)  # fmt: skip
TRAILERS = (
    "{title}, {company}\nTel. +1 555 {ph1} {ph2}",
    "Sent from my phone",
    "CONFIDENTIALITY NOTICE: this email is meant only for the addressee.",
    "-- forwarded by {colleague} --\n{colleague} asked me to send this on.",
    "{company} | {title} | +1 555 {ph1} {ph2}",
    "Please consider the environment before printing this email.",
)  # fmt: skip
SUBJECTS = (
    "Help", "Question about {x}", "Problem with my order", "{x}", "Re: {x}", "URGENT",
    "Need help ASAP", "quick question", "Issue", "{x} - please read", "Support request",
    "Hello", "Complaint", "Your product", "Important", "About my purchase",
)  # fmt: skip
# Subjects that name the problem, by category: what most customers write in the subject line.
# A ticket gets one with probability P_CUE_SUBJECT; otherwise a vague one from SUBJECTS, and
# its category must be read from the body.
CUE_SUBJECTS = {
    "billing": ("Wrong charge on {x}", "Billing question", "Double charge", "Invoice problem",
                "Charged incorrectly", "Billing error on {x}", "Payment issue", "Wrong invoice",
                "Overcharged for {x}", "Billing mistake"),
    "refund": ("Refund request", "Refund for {x}", "Where is my refund?", "Refund not received",
               "Requesting a refund", "Refund please", "Return and refund of {x}",
               "Still waiting for my refund", "Refund status", "Need a refund"),
    "shipping": ("Where is my parcel?", "Delivery problem", "{x} not delivered",
                 "Shipping delay", "Package not arrived", "Delivery issue with {x}",
                 "Late delivery", "Shipping problem", "Parcel missing", "Tracking not updating"),
    "technical": ("{x} not working", "Technical problem", "Error with {x}", "{x} broken",
                  "Technical issue", "Bug report", "{x} keeps failing", "Fault with {x}",
                  "Malfunction", "Something is broken"),
    "account": ("Can't log in", "Login problem", "Account access", "Password issue",
                "Locked out of {x}", "Account problem", "Sign-in trouble", "Account help needed",
                "Login issue with {x}", "Access to my account"),
    "cancellation": ("Cancel my order", "Cancellation request", "Please cancel {x}",
                     "Cancel subscription", "Cancellation", "Cancel {x}", "Want to cancel",
                     "Request to cancel", "Cancelling {x}", "Cancel please"),
    "feedback": ("Feedback on {x}", "Suggestion", "Some feedback", "Idea for {x}", "Compliment",
                 "Product feedback", "A suggestion for {x}", "Feature request", "Kudos",
                 "Feedback"),
}  # fmt: skip
PLAN_LABELS = (
    "Plan", "Account tier", "Customer tier", "Subscription level", "Tier", "Account type",
)  # fmt: skip
PLANS = ("Free", "Plus", "Pro", "Business")  # and "Enterprise", drawn separately
DATE_LABELS = ("Date", "Sent", "Received", "Date received", "Submitted", "Created")
CUSTOMER_LABELS = (
    "Customer no.", "Customer ID", "Account number", "Member no.", "Client ID", "Cust. no.",
)  # fmt: skip

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")  # fmt: skip
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
RELATIVE = {  # days back -> phrasings
    0: ("today", "this morning", "earlier today"),
    1: ("yesterday", "last night", "yesterday afternoon"),
    2: ("two days ago", "2 days ago", "the day before yesterday"),
    3: ("three days ago", "3 days ago"),
    4: ("four days ago", "4 days ago"),
    5: ("five days ago", "5 days ago"),
    7: ("a week ago", "one week ago", "exactly a week ago"),
}

# ---------------------------------------------------------------------------------------
# Pool partition and picking
# ---------------------------------------------------------------------------------------


def _held_out(index: int) -> bool:
    return index % HOLDOUT_EVERY == HOLDOUT_EVERY - 1


@cache
def _part(pool: tuple, heldout: bool) -> tuple:
    """Return the held-out (every HOLDOUT_EVERY-th item) or the remaining part of a pool.

    Pools shorter than HOLDOUT_EVERY (e.g. the phrasings of "2 days ago") are not split:
    holding out their only variant would make a fact unwritable in one split.
    """
    if len(pool) < HOLDOUT_EVERY:
        return pool
    return tuple(x for i, x in enumerate(pool) if _held_out(i) is heldout)


def _pick(rng: random.Random, pool: tuple, split: str, strict: bool = False) -> Any:
    """Pick from a pool's train part, or for test from its held-out part.

    strict: in test, always the held-out part (products, people); otherwise with
    probability TEST_HELDOUT_P, so test mixes seen and unseen phrasings.
    """
    heldout = split == "test" and (strict or rng.random() < TEST_HELDOUT_P)
    return rng.choice(_part(pool, heldout))


def pool_sizes() -> dict[str, dict[str, int]]:
    """Sizes of the train and held-out parts of every pool.

    Returns:
        {pool name: {"train": n, "heldout": n}}; "products" counts distinct product names
        (brands are split, device types, model tags and services are shared).
    """
    pools: dict[str, tuple] = {
        "brands": BRANDS, "first_names": FIRST_NAMES, "last_names": LAST_NAMES,
        "companies": COMPANIES, "greetings": GREETINGS, "context": CONTEXT, "requests": REQUESTS,
        "noise": NOISE, "other_product": OTHER_PRODUCT, "signoffs": SIGNOFFS, "trailers": TRAILERS,
        "subjects": SUBJECTS, "order_lines": ORDER_LINES, "order_forms": ORDER_FORMS,
        "invoice_lines": INVOICE_LINES,
        "amount_lines": AMOUNT_LINES, "blocked": BLOCKED, "deadline": DEADLINE, "repeat": REPEAT,
        "self_urgency": SELF_URGENCY,
    }  # fmt: skip
    for cat, kinds in PROBLEMS.items():
        pools.update({f"problems/{cat}/{kind}": pool for kind, pool in kinds.items()})
    pools.update({f"cue_subjects/{cat}": pool for cat, pool in CUE_SUBJECTS.items()})
    pools.update({f"date_lines/{cat}": pool for cat, pool in DATE_LINES.items()})
    pools.update({f"mentions/{style}": pool for style, pool in MENTIONS.items()})
    sizes = {n: {"train": len(_part(p, False)), "heldout": len(_part(p, True))}
             for n, p in pools.items()}  # fmt: skip
    per_brand = len(DEVICE_TYPES) * len(MODEL_TAGS) + len(SERVICES)
    sizes["products"] = {k: v * per_brand for k, v in sizes["brands"].items()}
    return sizes


# ---------------------------------------------------------------------------------------
# Field values and their written forms
# ---------------------------------------------------------------------------------------


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _product_name(rng: random.Random, split: str, kind: str) -> str:
    """A product name; brands are partitioned, so test products never occur in train."""
    brand = _pick(rng, BRANDS, split, strict=True)
    if kind == "service":
        return f"{brand} {rng.choice(SERVICES)}"
    kind_name, tag = rng.choice(DEVICE_TYPES), rng.choice(MODEL_TAGS)
    if not tag:
        return f"{brand} {kind_name}"
    # Numeric tags read naturally after the type ("Blender 300"), word tags before it.
    return f"{brand} {kind_name} {tag}" if tag[0].isdigit() else f"{brand} {tag} {kind_name}"


def _order_text(rng: random.Random, digits: str, split: str) -> str:
    form = _pick(rng, ORDER_FORMS, split)
    return form.format(d=digits, a=digits[:3], b=digits[3:])


def _amount_value(rng: random.Random) -> float:
    """A price, log-uniform from 5 to 3000 USD, with realistic cents."""
    whole = int(math.exp(rng.uniform(math.log(5), math.log(3000))))
    cents = rng.choice((0, 0, 99, 99, 50, rng.randrange(1, 100)))
    return round(whole + cents / 100, 2)


def _amount_text(rng: random.Random, value: float, split: str) -> str:
    """Write an amount in one of many styles; all normalise to `value`."""
    whole, cents = int(value), round(value * 100) % 100
    forms = [
        f"${value:,.2f}", f"${value:.2f}", f"USD {value:,.2f}", f"{value:.2f} USD",
        f"US${value:,.2f}", f"{value:.2f}$", f"{value:.2f} dollars", f"USD {value:g}",
    ]  # fmt: skip
    if cents == 0:
        forms += [f"${whole:,}", f"{whole:,} dollars", f"{whole} USD", f"{whole} bucks"]
    else:
        forms += [f"{whole} dollars and {cents} cents", f"${value:,.2f}"]
    return _pick(rng, tuple(forms), split)


def _date_forms(d: date, same_year: bool) -> tuple[str, ...]:
    """Absolute written forms of `d`; forms without a year only if it is the header's year."""
    month, mon = MONTHS[d.month - 1], MONTHS[d.month - 1][:3]
    forms = [
        f"{month} {_ordinal(d.day)}, {d.year}", f"{d.day} {mon} {d.year}",
        f"{d.month:02d}/{d.day:02d}/{d.year}", f"{d.month}/{d.day}/{d.year}",
        d.isoformat(), f"the {_ordinal(d.day)} of {month} {d.year}", f"{month} {d.day}, {d.year}",
    ]  # fmt: skip
    if same_year:
        forms += [
            f"{month} {_ordinal(d.day)}", f"{month} {d.day}", f"the {_ordinal(d.day)} of {month}",
            f"{mon}. {d.day}", f"{d.day} {month}",
        ]  # fmt: skip
    return tuple(forms)


def _when_text(rng: random.Random, event: date, ticket: date, split: str) -> str:
    """The event date as a phrase ("on 03/14/2026", "yesterday") readable from the ticket."""
    back = (ticket - event).days
    if back in RELATIVE and rng.random() < P_RELATIVE_DATE:
        return _pick(rng, RELATIVE[back], split)
    return "on " + _pick(rng, _date_forms(event, event.year == ticket.year), split)


def _header_date(rng: random.Random, d: date, split: str) -> str:
    wd, month = WEEKDAYS[d.weekday()], MONTHS[d.month - 1]
    hh, mm = rng.randrange(7, 21), rng.randrange(60)
    forms = (
        d.isoformat(), f"{wd[:3]}, {d.day} {month[:3]} {d.year} {hh:02d}:{mm:02d}",
        f"{month} {d.day}, {d.year} at {hh:02d}:{mm:02d}", f"{wd} {d.day} {month} {d.year}",
        f"{d.isoformat()} {hh:02d}:{mm:02d}", f"{d.day} {month} {d.year}",
    )  # fmt: skip
    return _pick(rng, forms, split)


# ---------------------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------------------


def priority_for(category: str, blocked: bool, deadline: bool, repeat: bool) -> str:
    """Apply the documented priority rule.

    Args:
        category: the ticket's category; feedback is always low.
        blocked: work or business is blocked: urgent.
        deadline: the customer names a deadline: one level up.
        repeat: a repeat contact: one level up.

    Returns:
        "low", "medium", "high" or "urgent".
    """
    if category == "feedback":
        return "low"
    if blocked:
        return "urgent"
    return PRIORITIES[deadline + repeat]


def _json_number(value: float) -> float | int:
    return int(value) if value == int(value) else value


def answer_json(answer: dict[str, Any]) -> str:
    """Serialise an answer dict as the one-line reference JSON, keys in FIELDS order."""
    return json.dumps({k: answer[k] for k in FIELDS}, ensure_ascii=False)


# ---------------------------------------------------------------------------------------
# Ticket composition
# ---------------------------------------------------------------------------------------


@dataclass
class _Ticket:
    """What a ticket says, before it is written out."""

    category: str
    kind: str
    product: str | None
    other_product: str | None
    ticket_date: date
    event_date: date | None
    order_digits: str | None
    amount: float | None
    enterprise: bool
    blocked: bool
    deadline: bool
    repeat: bool
    first: str
    last: str
    customer_no: str | None

    def answer(self) -> dict[str, Any]:
        prio = priority_for(self.category, self.blocked, self.deadline, self.repeat)
        return {
            "category": self.category,
            "priority": prio,
            "product": self.product,
            "order_id": f"ORD-{self.order_digits}" if self.order_digits else None,
            "amount": _json_number(self.amount) if self.amount is not None else None,
            "date": self.event_date.isoformat() if self.event_date else None,
        }


def _draw_ticket(rng: random.Random, split: str) -> _Ticket:
    """Draw the facts of one ticket: category, product, fields and priority signals."""
    category = rng.choice(CATEGORIES)
    kind = rng.choice(KINDS[category])
    named = rng.random() >= P_NO_PRODUCT[category]
    product = _product_name(rng, split, kind) if named else None
    mention_other = named and rng.random() < P_OTHER_PRODUCT
    other = _product_name(rng, split, "device") if mention_other else None
    ticket_date = date(2025, 1, 1) + timedelta(days=rng.randrange(730))
    event = ticket_date - timedelta(days=rng.choice((0, 1, 2, 3, 5, 7, rng.randrange(60))))
    feedback = category == "feedback"
    return _Ticket(
        category=category,
        kind=kind,
        product=product,
        other_product=other if other != product else None,
        ticket_date=ticket_date,
        event_date=event if rng.random() < P_DATE else None,
        order_digits=_digits(rng) if rng.random() < P_ORDER[category] else None,
        amount=_amount_value(rng) if rng.random() < P_AMOUNT[category] else None,
        enterprise=rng.random() < P_ENTERPRISE,
        blocked=category in BLOCKABLE and rng.random() < P_BLOCKED,
        deadline=not feedback and rng.random() < P_DEADLINE,
        repeat=not feedback and rng.random() < P_REPEAT,
        first=_pick(rng, FIRST_NAMES, split, strict=True),
        last=_pick(rng, LAST_NAMES, split, strict=True),
        # A 6-digit customer number is a distractor for the order id.
        customer_no=_digits(rng) if rng.random() < P_CUSTOMER_NO else None,
    )


def _digits(rng: random.Random) -> str:
    return str(rng.randrange(100000, 1000000))


def _style(t: _Ticket) -> str:
    """How the ticket refers to its product: a key of MENTIONS and GENERIC."""
    return STYLE.get((t.category, t.kind), "device")


def _mention(rng: random.Random, t: _Ticket, split: str) -> str:
    if t.product is None:
        return _pick(rng, GENERIC[_style(t)], split)
    return _pick(rng, MENTIONS[_style(t)], split).format(x=t.product)


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _header(rng: random.Random, t: _Ticket, split: str) -> list[str]:
    """Header lines: sender, date, plan (and maybe a customer number), subject."""
    first, last = t.first, t.last
    email = f"{first.lower()}.{last.lower()}@{_pick(rng, EMAIL_DOMAINS, split)}"
    sender = rng.choice((f"{first} {last} <{email}>", email, f"{first} {last}"))
    plan = "Enterprise" if t.enterprise else rng.choice(PLANS)
    plan = rng.choice((plan, plan.lower(), plan.upper()))
    meta = [
        f"{_pick(rng, DATE_LABELS, split)}: {_header_date(rng, t.ticket_date, split)}",
        f"{_pick(rng, PLAN_LABELS, split)}: {plan}",
    ]
    if t.customer_no:
        meta.append(f"{_pick(rng, CUSTOMER_LABELS, split)}: {t.customer_no}")
    rng.shuffle(meta)
    pool = CUE_SUBJECTS[t.category] if rng.random() < P_CUE_SUBJECT else SUBJECTS
    subject = _cap(_pick(rng, pool, split).format(x=t.product or GENERIC[_style(t)][0]))
    return [f"From: {sender}", *meta, f"Subject: {subject}"]


def _detail_lines(rng: random.Random, t: _Ticket, split: str) -> list[str]:
    """Sentences carrying the order id, amount and event date."""
    lines = []
    if t.order_digits:
        oid = _order_text(rng, t.order_digits, split)
        lines.append(_pick(rng, ORDER_LINES, split).format(oid=oid))
    if t.category == "billing" and rng.random() < 0.3:  # a distractor for the order id
        inv = f"INV-{t.ticket_date.year}-{rng.randrange(1000, 10000)}"
        lines.append(_pick(rng, INVOICE_LINES, split).format(inv=inv))
    if t.amount is not None:
        lines.append(_pick(rng, AMOUNT_LINES, split).format(amt=_amount_text(rng, t.amount, split)))
    if t.event_date:
        when = _when_text(rng, t.event_date, t.ticket_date, split)
        lines.append(_pick(rng, DATE_LINES[t.category], split).format(when=when))
    return lines


def _signal_lines(rng: random.Random, t: _Ticket, split: str) -> list[str]:
    """Priority signals, plus the customer's own urgency words (which do not count)."""
    case = rng.choice(("#", "CS-", "no. ")) + str(rng.randrange(10000, 100000))
    lines = []
    if t.blocked:
        lines.append(_pick(rng, BLOCKED, split))
    if t.deadline:
        lines.append(_pick(rng, DEADLINE, split))
    if t.repeat:
        lines.append(_pick(rng, REPEAT, split).format(case=case))
    if t.category != "feedback" and rng.random() < 0.3:
        lines.append(_pick(rng, SELF_URGENCY, split))
    return lines


def _optional_lines(rng: random.Random, t: _Ticket, split: str) -> list[str]:
    """Irrelevant sentences: pleasantries and a second product mentioned in passing."""
    lines = []
    if rng.random() < 0.35:
        lines.append(_pick(rng, NOISE, split))
    if t.other_product:
        lines.append(_pick(rng, OTHER_PRODUCT, split).format(other=t.other_product))
    return lines


def _trailer(rng: random.Random, t: _Ticket, split: str) -> str:
    first, last = _pick(rng, FIRST_NAMES, split, True), _pick(rng, LAST_NAMES, split, True)
    colleague = f"{first} {last}"
    return _pick(rng, TRAILERS, split).format(
        title=_pick(rng, TITLES, split),
        company=_pick(rng, COMPANIES, split, strict=True),
        ph1=rng.randrange(1000, 10000),
        ph2=rng.randrange(100, 1000),
        colleague=colleague,
    )


def _restyle(rng: random.Random, text: str) -> str:
    """Vary casing and punctuation the way hurried emails do."""
    # A sentence end: a period after a word or number (so "No. 123" and "Mar. 3" stay).
    end = r"(?<=[a-z0-9]{3})\.(?=\s|$)"
    r = rng.random()
    if r < 0.08:
        return text.lower()
    if r < 0.14:
        return re.sub(end, "", text)
    if r < 0.18:
        return text.replace("'", "")  # dont, cant
    if r < 0.22:
        return re.sub(end, "!", text, count=1)
    return text


def _body(rng: random.Random, t: _Ticket, split: str) -> tuple[list[str], list[str]]:
    """The body's sentences in order, and those of them that may be dropped for length."""
    problem = _cap(_pick(rng, PROBLEMS[t.category][t.kind], split).format(
        p=_mention(rng, t, split), code=rng.randrange(10, 100)))  # fmt: skip
    details = _detail_lines(rng, t, split)
    middle = details + _signal_lines(rng, t, split)
    rng.shuffle(middle)
    # Mostly problem first, but sometimes the customer leads with the order details.
    sentences = [problem, *middle] if rng.random() < 0.75 or not details else [*middle, problem]
    droppable = _optional_lines(rng, t, split)
    for line in droppable:  # noise lands anywhere among the sentences
        sentences.insert(rng.randrange(len(sentences) + 1), line)
    if rng.random() < 0.45:
        company = _pick(rng, COMPANIES, split, strict=True)
        context = _pick(rng, CONTEXT, split).format(n=rng.randrange(2, 12), company=company)
        sentences.insert(0, context)
        droppable.append(context)
    if t.category != "feedback" and rng.random() < 0.7:  # feedback asks for nothing
        request = _pick(rng, REQUESTS, split)
        sentences.append(request)
        droppable.append(request)
    return sentences, droppable


def _join(rng: random.Random, sentences: list[str]) -> str:
    """Join sentences into one or more paragraphs."""
    out, para = [], []
    for s in sentences:
        para.append(s)
        if "\n" in s or rng.random() < 0.25:
            out.append(" ".join(para))
            para = []
    if para:
        out.append(" ".join(para))
    return "\n".join(out) if rng.random() < 0.5 else "\n\n".join(out)


def _write(rng: random.Random, t: _Ticket, split: str) -> str:
    """Write the ticket out, dropping optional sentences while it exceeds MAX_WORDS."""
    header = _header(rng, t, split)
    sentences, droppable = _body(rng, t, split)
    greeting = _pick(rng, GREETINGS, split) if rng.random() < 0.85 else None
    signoff = _pick(rng, SIGNOFFS, split).format(first=t.first, last=t.last)
    trailer = _trailer(rng, t, split) if rng.random() < 0.4 else None

    def render() -> str:
        body = _join(rng, sentences)
        parts = [p for p in (greeting, body, signoff, trailer) if p]
        return "\n".join(header) + "\n\n" + "\n\n".join(parts)

    text = render()
    while len(text.split()) > MAX_WORDS and (trailer or droppable):
        if trailer:
            trailer = None
        else:
            sentences.remove(droppable.pop(0))
        text = render()
    while len(text.split()) < MIN_WORDS:
        filler = _pick(rng, NOISE, split)
        for _ in range(5):  # avoid saying the same pleasantry twice
            if filler not in sentences:
                break
            filler = _pick(rng, NOISE, split)
        sentences.insert(len(sentences) - 1, filler)
        text = render()
    return _restyle_body(rng, text)


def _restyle_body(rng: random.Random, text: str) -> str:
    head, sep, body = text.partition("\n\n")
    return head + sep + _restyle(rng, body)


# ---------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------


def _split_rows(split: str, n: int, seed: int, seen: set[str]) -> list[dict[str, str]]:
    rng = random.Random(f"{seed}:{split}")  # str seeds hash with sha512: stable across runs
    rows: list[dict[str, str]] = []
    while len(rows) < n:
        t = _draw_ticket(rng, split)
        text = _write(rng, t, split)
        if text in seen:  # no exact duplicate inputs, within or across splits
            continue
        seen.add(text)
        rows.append({"id": f"{split}-{len(rows):05d}", "instruction": INSTRUCTION,
                     "input": text, "output": answer_json(t.answer())})  # fmt: skip
    return rows


def generate(
    seed: int = 0, n_train: int = 2000, n_val: int = 100, n_test: int = 200
) -> dict[str, list[dict]]:
    """Generate the triage dataset.

    Args:
        seed: random seed; the same arguments give the same rows in any process.
        n_train: number of train rows.
        n_val: number of validation rows (drawn like train).
        n_test: number of test rows (held-out products, people and some phrasings).

    Returns:
        {"train": rows, "val": rows, "test": rows}; each row is
        {"id", "instruction", "input", "output"} with `output` the one-line JSON answer.
    """
    seen: set[str] = set()
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    return {split: _split_rows(split, sizes[split], seed, seen) for split in SPLITS}


def parse_answer(text: str) -> dict | None:
    """Extract the first JSON object from a model generation.

    Tolerates text before and after the object and Markdown code fences.

    Args:
        text: the generation.

    Returns:
        The first decodable JSON object, or None if there is none.
    """
    decoder = json.JSONDecoder()
    for m in re.finditer(r"\{", text or ""):
        try:
            obj, _ = decoder.raw_decode(text, m.start())
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return obj
    return None


def _as_number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v.replace(",", "").replace("$", "").strip())
        except ValueError:
            return None
    return None


def _same(pred: Any, ref: Any) -> bool:
    """Field equality: None only equals None, numbers within 0.005, strings case-folded."""
    if ref is None or pred is None:
        return ref is None and pred is None
    if isinstance(ref, (int, float)) and not isinstance(ref, bool):
        p = _as_number(pred)
        return p is not None and abs(p - float(ref)) <= 0.005
    return " ".join(str(pred).split()).casefold() == " ".join(str(ref).split()).casefold()


def score(pred: str, ref: str) -> dict[str, float]:
    """Score a generation against the reference answer.

    Args:
        pred: the model's generation (JSON, possibly with surrounding text).
        ref: the reference output (a row's `output`).

    Returns:
        {"exact": 0/1, "valid_json": 0/1, <field>: 0/1 for each of FIELDS}; exact is 1 when
        every field matches.
    """
    r = parse_answer(ref)
    if r is None:
        raise ValueError(f"reference is not JSON: {ref!r}")
    p = parse_answer(pred)
    out: dict[str, float] = {"valid_json": float(p is not None)}
    for f in FIELDS:
        out[f] = float(p is not None and f in p and _same(p[f], r.get(f)))
    out["exact"] = float(p is not None and all(out[f] for f in FIELDS))
    return {"exact": out.pop("exact"), **out}


def write_jsonl(rows: Iterable[dict], path: str | Path) -> Path:
    """Write rows as JSON lines (UTF-8) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def _print_samples(splits: dict[str, Sequence[dict]], k: int = 3) -> None:
    for rows in splits.values():
        for row in rows[:k]:
            print(f"=== {row['id']} ===\n{row['input']}\n--> {row['output']}\n")


if __name__ == "__main__":
    _print_samples(generate(seed=int(sys.argv[1]) if len(sys.argv) > 1 else 0))

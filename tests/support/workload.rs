//! coin's API write pattern against a real server, with a model of the
//! balances it writes: the transaction first (insert, or `$set` of its
//! fields), then the balance of each pocket it moves. Used by
//! `tests/run.rs` (the full mix of operations) and `tests/ha.rs` (a trimmed
//! one); a [`Profile`] says which.
//!
//! Knobs on [`Coin`] bend the pattern the way coin does in production: a
//! pause between the two writes, balance writes that never come, balances
//! computed through float64.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bson::oid::ObjectId;
use bson::{doc, Bson, DateTime as BsonDateTime, Document};
use chrono::{DateTime, NaiveDate, Utc};
use mongodb::{ClientSession, Database};
use tally::core::money::Money;
use tally::core::rng::Rng;

use super::process::{Env, TestClock};

/// How an amount is encoded in the document.
#[derive(Clone, Copy, Debug)]
pub enum Enc {
    Decimal,
    Str,
    Double,
    Int,
}

/// A transaction as the API writes it.
#[derive(Clone, Debug)]
pub struct Tx {
    pub id: ObjectId,
    pub user: ObjectId,
    pub kind: &'static str,
    pub amount: Money,
    pub enc: Enc,
    pub from: Option<ObjectId>,
    pub to: Option<ObjectId>,
    pub category: Option<ObjectId>,
    pub date: DateTime<Utc>,
    pub deleted: bool,
    /// Written with an amount that is not a number (invalid, contract §1.5).
    pub garbled: bool,
}

pub fn money(s: &str) -> Money {
    s.parse().expect("money")
}

fn bdt(t: DateTime<Utc>) -> BsonDateTime {
    BsonDateTime::from_millis(t.timestamp_millis())
}

fn opt(o: Option<ObjectId>) -> Bson {
    o.map_or(Bson::Null, Bson::ObjectId)
}

impl Tx {
    pub fn new(user: ObjectId, kind: &'static str, amount: &str, date: DateTime<Utc>) -> Tx {
        Tx {
            id: ObjectId::new(),
            user,
            kind,
            amount: money(amount),
            enc: Enc::Decimal,
            from: None,
            to: None,
            category: None,
            date,
            deleted: false,
            garbled: false,
        }
    }

    pub fn from(mut self, p: ObjectId) -> Tx {
        self.from = Some(p);
        self
    }

    pub fn to(mut self, p: ObjectId) -> Tx {
        self.to = Some(p);
        self
    }

    pub fn enc(mut self, e: Enc) -> Tx {
        self.enc = e;
        self
    }

    pub fn category(mut self, c: ObjectId) -> Tx {
        self.category = Some(c);
        self
    }

    fn amount_bson(&self) -> Bson {
        if self.garbled {
            return Bson::String("twelve".into());
        }
        match self.enc {
            Enc::Decimal => self.amount.to_bson(),
            Enc::Str => Bson::String(self.amount.to_string()),
            Enc::Double => Bson::Double(self.amount.to_string().parse().expect("f64")),
            Enc::Int => Bson::Int64(self.amount.to_string().parse().expect("integral amount")),
        }
    }

    /// The document's fields, without `_id`.
    fn fields(&self, now: DateTime<Utc>) -> Document {
        doc! {
            "user_id": self.user,
            "type": self.kind,
            "amount": self.amount_bson(),
            "pocket_from_id": opt(self.from),
            "pocket_to_id": opt(self.to),
            "category_id": opt(self.category),
            "note": format!("{} {}", self.kind, self.amount),
            "date": bdt(self.date),
            "deleted_at": if self.deleted { Bson::DateTime(bdt(now)) } else { Bson::Null },
            "updated_at": bdt(now),
        }
    }

    /// (pocket, signed amount) of each effect, as the API applies them: only
    /// on the user's own pockets, only for live valid transactions.
    pub fn effects(&self, owner: &HashMap<ObjectId, ObjectId>) -> Vec<(ObjectId, Money)> {
        if self.deleted || self.garbled {
            return Vec::new();
        }
        let (out, inn) = match self.kind.to_ascii_lowercase().as_str() {
            "income" => (false, true),
            "expense" | "dp" | "debt_payment" | "withdraw" => (true, false),
            "transfer" => (true, true),
            _ => (false, false),
        };
        let mine = |p: &Option<ObjectId>| p.filter(|p| owner.get(p) == Some(&self.user));
        let mut e = Vec::new();
        if out {
            e.extend(mine(&self.from).map(|p| (p, Money::ZERO - self.amount)));
        }
        if inn {
            e.extend(mine(&self.to).map(|p| (p, self.amount)));
        }
        e
    }
}

/// One kind of API operation of [`Coin::random_ops`]. Days are counted
/// from today: `ahead - below(span)`.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    /// A new transaction of a random user.
    Insert {
        ahead: i64,
        span: u64,
    },
    /// A new amount (up to 900.00) for an existing transaction.
    Amount,
    /// A new date (at hh:30) for an existing transaction.
    Date {
        ahead: i64,
        span: u64,
    },
    /// Soft delete, or its undoing.
    ToggleDeleted,
    HardDelete,
    /// income ↔ expense, with the user's first pocket as `to` and last as
    /// `from`.
    FlipType,
    /// Another category.
    Category,
    /// 3.50 added to a random pocket's balance (drift).
    Drift,
}

/// The shape of a workload.
#[derive(Clone, Copy, Debug)]
pub struct Profile {
    /// The encodings of random transactions' amounts (drawn per
    /// transaction when there are several).
    pub encodings: &'static [Enc],
    /// Whether the saving pocket of [`Coin::population`] has a `created_at`
    /// (5 days before its history) rather than none.
    pub dated_savings: bool,
    /// Each operation with its share in percent (they add up to 100). The
    /// first is an [`Op::Insert`]: what happens while nothing exists yet.
    pub ops: &'static [(u64, Op)],
}

impl Profile {
    /// Every kind of change the API makes (`tests/run.rs`): inserts
    /// back-dated (some before a 20-day window) or a few days ahead, edits
    /// of amount, date, type and category, soft and hard deletes, drift;
    /// amounts in every encoding.
    pub const FULL: Profile = Profile {
        encodings: &[Enc::Decimal, Enc::Str, Enc::Double, Enc::Decimal],
        dated_savings: true,
        ops: &[
            (45, Op::Insert { ahead: 3, span: 34 }),
            (15, Op::Amount),
            (10, Op::Date { ahead: 2, span: 30 }),
            (10, Op::ToggleDeleted),
            (7, Op::HardDelete),
            (5, Op::FlipType),
            (5, Op::Category),
            (3, Op::Drift),
        ],
    };

    /// The changes that move reports (`tests/ha.rs`): inserts (mostly
    /// recent), edits of amount and date, soft and hard deletes; amounts as
    /// Decimal128.
    pub const TRIMMED: Profile = Profile {
        encodings: &[Enc::Decimal],
        dated_savings: false,
        ops: &[
            (50, Op::Insert { ahead: 2, span: 15 }),
            (20, Op::Amount),
            (10, Op::Date { ahead: 1, span: 12 }),
            (12, Op::ToggleDeleted),
            (8, Op::HardDelete),
        ],
    };

    /// The operation a roll of 0..100 falls on.
    fn op(&self, roll: u64) -> Op {
        let mut below = 0;
        for (share, op) in self.ops {
            below += share;
            if roll < below {
                return *op;
            }
        }
        panic!("the shares of {:?} add up to {below}, not 100", self.ops)
    }
}

/// The coin API, as far as tally can see it.
pub struct Coin {
    db: Database,
    clock: TestClock,
    profile: Profile,
    pub balances: BTreeMap<ObjectId, Money>,
    pub owner: HashMap<ObjectId, ObjectId>,
    /// Pockets of each user, in creation order.
    pub pockets: BTreeMap<ObjectId, Vec<ObjectId>>,
    pub txs: BTreeMap<ObjectId, Tx>,
    pub categories: Vec<ObjectId>,
    /// Pause between the transaction write and the balance writes.
    pub gap: Duration,
    /// Leave the balance writes out (they never come: drift).
    pub unbalanced: bool,
    /// Compute balances as coin does, through float64 (Decimal128 → f64 →
    /// add → shortest text → Decimal128): they carry float noise.
    pub float: bool,
    /// Drift applied to each pocket ([`Coin::drift`]), exact.
    pub drifted: BTreeMap<ObjectId, Money>,
}

impl Coin {
    /// Writes three categories; no users yet.
    pub async fn new(env: &Env, profile: Profile) -> Coin {
        let categories: Vec<ObjectId> = (0..3).map(|_| ObjectId::new()).collect();
        let docs: Vec<Document> = categories
            .iter()
            .zip(["Groceries", "Salary", "Rent"])
            .map(|(id, name)| doc! { "_id": *id, "name": name })
            .collect();
        env.db
            .collection::<Document>("user_categories")
            .insert_many(docs)
            .await
            .expect("categories");
        Coin {
            db: env.db.clone(),
            clock: env.clock,
            profile,
            balances: BTreeMap::new(),
            owner: HashMap::new(),
            pockets: BTreeMap::new(),
            txs: BTreeMap::new(),
            categories,
            gap: Duration::ZERO,
            unbalanced: false,
            float: false,
            drifted: BTreeMap::new(),
        }
    }

    pub fn users(&self) -> Vec<ObjectId> {
        self.pockets.keys().copied().collect()
    }

    pub async fn pocket(
        &mut self,
        user: ObjectId,
        kind: &str,
        balance: &str,
        created: Option<DateTime<Utc>>,
    ) -> ObjectId {
        let id = ObjectId::new();
        let b = money(balance);
        self.db
            .collection::<Document>("pockets")
            .insert_one(doc! {
                "_id": id, "user_id": user, "name": format!("{kind} {}", &id.to_hex()[18..]),
                "type": kind, "balance": b.to_bson(), "is_active": true,
                "created_at": created.map_or(Bson::Null, |t| Bson::DateTime(bdt(t))),
                "deleted_at": Bson::Null,
            })
            .await
            .expect("pocket");
        self.balances.insert(id, b);
        self.owner.insert(id, user);
        self.pockets.entry(user).or_default().push(id);
        id
    }

    pub async fn delete_pocket(&mut self, pocket: ObjectId, at: DateTime<Utc>) {
        self.db
            .collection::<Document>("pockets")
            .update_one(
                doc! { "_id": pocket },
                doc! { "$set": { "deleted_at": bdt(at), "is_active": false } },
            )
            .await
            .expect("pocket deleted");
    }

    /// Gives `pocket` to `user` (its balance stays).
    pub async fn move_pocket(&mut self, pocket: ObjectId, user: ObjectId) {
        self.db
            .collection::<Document>("pockets")
            .update_one(doc! { "_id": pocket }, doc! { "$set": { "user_id": user } })
            .await
            .expect("pocket moved");
        let old = self.owner.insert(pocket, user).expect("known pocket");
        self.pockets
            .get_mut(&old)
            .expect("owner")
            .retain(|p| *p != pocket);
        self.pockets.entry(user).or_default().push(pocket);
    }

    /// Hard-deletes `pocket`.
    pub async fn remove_pocket(&mut self, pocket: ObjectId) {
        self.db
            .collection::<Document>("pockets")
            .delete_one(doc! { "_id": pocket })
            .await
            .expect("pocket removed");
        let owner = self.owner.remove(&pocket).expect("known pocket");
        self.balances.remove(&pocket);
        self.pockets
            .get_mut(&owner)
            .expect("owner")
            .retain(|p| *p != pocket);
    }

    /// Writes `tx` (insert, or `$set` of every field when it exists), then
    /// the balance of each pocket whose effects changed.
    pub async fn save(&mut self, tx: Tx) -> ObjectId {
        self.save_in(tx, None).await
    }

    /// [`Coin::save`], inside `session`'s transaction when there is one.
    pub async fn save_in(&mut self, tx: Tx, mut session: Option<&mut ClientSession>) -> ObjectId {
        let now = self.clock.now();
        let coll = self.db.collection::<Document>("transactions");
        let old = self.txs.get(&tx.id).cloned();
        match (&old, session.as_deref_mut()) {
            (None, s) => {
                let mut d = doc! { "_id": tx.id, "created_at": bdt(now) };
                d.extend(tx.fields(now));
                let op = coll.insert_one(d);
                match s {
                    Some(s) => op.session(s).await,
                    None => op.await,
                }
                .expect("insert transaction");
            }
            (Some(_), s) => {
                let op = coll.update_one(doc! { "_id": tx.id }, doc! { "$set": tx.fields(now) });
                match s {
                    Some(s) => op.session(s).await,
                    None => op.await,
                }
                .expect("update transaction");
            }
        }
        let id = tx.id;
        let mut delta: BTreeMap<ObjectId, Money> = BTreeMap::new();
        for (p, m) in tx.effects(&self.owner) {
            *delta.entry(p).or_insert(Money::ZERO) += m;
        }
        if let Some(old) = &old {
            for (p, m) in old.effects(&self.owner) {
                *delta.entry(p).or_insert(Money::ZERO) -= m;
            }
        }
        self.txs.insert(id, tx);
        if self.unbalanced {
            return id;
        }
        if !self.gap.is_zero() {
            tokio::time::sleep(self.gap).await;
        }
        self.apply(delta, session).await;
        id
    }

    async fn apply(
        &mut self,
        delta: BTreeMap<ObjectId, Money>,
        mut session: Option<&mut ClientSession>,
    ) {
        let pockets = self.db.collection::<Document>("pockets");
        for (p, m) in delta {
            if m.is_zero() {
                continue;
            }
            let b = self.balances.get_mut(&p).expect("known pocket");
            *b = if self.float {
                let f = |m: Money| m.to_string().parse::<f64>().expect("f64");
                Money::from_f64(f(*b) + f(m)).expect("finite")
            } else {
                *b + m
            };
            let op = pockets.update_one(
                doc! { "_id": p },
                doc! { "$set": { "balance": b.to_bson(), "updated_at": bdt(self.clock.now()) } },
            );
            match session.as_deref_mut() {
                Some(s) => op.session(s).await,
                None => op.await,
            }
            .expect("balance");
        }
    }

    pub fn tx(&self, id: ObjectId) -> Tx {
        self.txs[&id].clone()
    }

    pub async fn edit(&mut self, id: ObjectId, f: impl FnOnce(&mut Tx)) {
        let mut tx = self.tx(id);
        f(&mut tx);
        self.save(tx).await;
    }

    pub async fn hard_delete(&mut self, id: ObjectId) {
        let old = self.txs.remove(&id).expect("known transaction");
        self.db
            .collection::<Document>("transactions")
            .delete_one(doc! { "_id": id })
            .await
            .expect("delete");
        let delta = old
            .effects(&self.owner)
            .into_iter()
            .map(|(p, m)| (p, Money::ZERO - m))
            .collect();
        self.apply(delta, None).await;
    }

    /// A balance change no transaction explains.
    pub async fn drift(&mut self, pocket: ObjectId, by: &str) {
        *self.drifted.entry(pocket).or_insert(Money::ZERO) += money(by);
        self.apply(BTreeMap::from([(pocket, money(by))]), None)
            .await;
    }

    /// Users with pockets `[main, saving]` and a history of transactions
    /// over `days` before today (the API's write pattern).
    pub async fn population(
        &mut self,
        env: &Env,
        users: usize,
        per_user: usize,
        days: u64,
        seed: u64,
    ) {
        let mut rng = Rng::new(seed);
        let opened = self
            .profile
            .dated_savings
            .then(|| env.at(env.day(-(days as i64) - 5), 9, 0));
        for _ in 0..users {
            let user = ObjectId::new();
            self.pocket(user, "main", "250", None).await;
            self.pocket(user, "saving", "0", opened).await;
        }
        for user in self.users() {
            for _ in 0..per_user {
                let day = env.day(-1 - rng.below(days) as i64);
                let tx = self.random_tx(env, &mut rng, user, day);
                self.save(tx).await;
            }
        }
    }

    /// A transaction of `user` on `day`: a random type, amount (up to
    /// 400.00, in one of the profile's encodings), time, pockets of the
    /// user and (70 %) category.
    pub fn random_tx(&self, env: &Env, rng: &mut Rng, user: ObjectId, day: NaiveDate) -> Tx {
        let pockets = &self.pockets[&user];
        let pick = |rng: &mut Rng| pockets[rng.below(pockets.len() as u64) as usize];
        let kind =
            ["income", "expense", "expense", "transfer", "dp", "withdraw"][rng.below(6) as usize];
        let cents = 1 + rng.below(40_000);
        let enc = match self.profile.encodings {
            [one] => *one,
            all => all[rng.below(all.len() as u64) as usize],
        };
        let amount = format!("{}.{:02}", cents / 100, cents % 100);
        let mut tx = Tx::new(
            user,
            kind,
            &amount,
            env.at(day, rng.below(24) as u32, rng.below(60) as u32),
        )
        .enc(enc);
        match kind {
            "income" => tx.to = Some(pick(rng)),
            "transfer" => {
                tx.from = Some(pick(rng));
                tx.to = Some(pick(rng));
            }
            _ => tx.from = Some(pick(rng)),
        }
        if rng.chance(70) {
            tx.category = Some(self.categories[rng.below(3) as usize]);
        }
        tx
    }

    /// `n` random API operations, in the mix of the profile.
    pub async fn random_ops(&mut self, env: &Env, rng: &mut Rng, n: usize) {
        let users = self.users();
        for _ in 0..n {
            let roll = rng.below(100);
            let existing: Vec<ObjectId> = self.txs.keys().copied().collect();
            let any = |rng: &mut Rng| existing[rng.below(existing.len() as u64) as usize];
            let op = match self.profile.ops[0] {
                (_, first) if existing.is_empty() => first,
                _ => self.profile.op(roll),
            };
            let day =
                |rng: &mut Rng, ahead: i64, span: u64| env.day(ahead - rng.below(span) as i64);
            match op {
                Op::Insert { ahead, span } => {
                    let user = users[rng.below(users.len() as u64) as usize];
                    let day = day(rng, ahead, span);
                    let tx = self.random_tx(env, rng, user, day);
                    self.save(tx).await;
                }
                Op::Amount => {
                    let cents = 1 + rng.below(90_000);
                    let id = any(rng);
                    self.edit(id, |t| {
                        t.amount = money(&format!("{}.{:02}", cents / 100, cents % 100))
                    })
                    .await;
                }
                Op::Date { ahead, span } => {
                    let day = day(rng, ahead, span);
                    let at = env.at(day, rng.below(24) as u32, 30);
                    self.edit(any(rng), |t| t.date = at).await;
                }
                Op::ToggleDeleted => self.edit(any(rng), |t| t.deleted = !t.deleted).await,
                Op::HardDelete => self.hard_delete(any(rng)).await,
                Op::FlipType => {
                    let id = any(rng);
                    let pockets = self.pockets[&self.txs[&id].user].clone();
                    self.edit(id, |t| {
                        t.kind = if t.kind == "income" {
                            "expense"
                        } else {
                            "income"
                        };
                        t.to = Some(pockets[0]);
                        t.from = Some(pockets[pockets.len() - 1]);
                    })
                    .await;
                }
                Op::Category => {
                    let c = self.categories[rng.below(3) as usize];
                    self.edit(any(rng), |t| t.category = Some(c)).await;
                }
                Op::Drift => {
                    let pockets: Vec<ObjectId> = self.balances.keys().copied().collect();
                    let p = pockets[rng.below(pockets.len() as u64) as usize];
                    self.drift(p, "3.5").await;
                }
            }
        }
    }
}

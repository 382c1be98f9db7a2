//! A slot arena with typed indices: participants and tracks live in one each, and an index
//! of one kind cannot be used for the other. Freed slots are reused, so an index is only
//! meaningful while its item lives (every holder drops it when the item goes).

use std::marker::PhantomData;

/// An index into one kind of [`Arena`].
pub trait ArenaIndex: Copy + Eq + std::fmt::Debug {
    fn from_slot(slot: usize) -> Self;
    fn slot(self) -> usize;
}

macro_rules! arena_index {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(usize);

        impl ArenaIndex for $name {
            fn from_slot(slot: usize) -> Self {
                Self(slot)
            }
            fn slot(self) -> usize {
                self.0
            }
        }
    };
}

arena_index!(
    /// A participant's place in its worker's arena.
    ParticipantIdx
);
arena_index!(
    /// A published track's place in its worker's arena.
    TrackIdx
);

#[derive(Debug)]
pub struct Arena<I, T> {
    slots: Vec<Option<T>>,
    free: Vec<usize>,
    _index: PhantomData<I>,
}

impl<I: ArenaIndex, T> Default for Arena<I, T> {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            _index: PhantomData,
        }
    }
}

impl<I: ArenaIndex, T> Arena<I, T> {
    /// Puts `item` in a free slot (or a new one) and returns its index.
    pub fn insert(&mut self, item: T) -> I {
        match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some(item);
                I::from_slot(slot)
            }
            None => {
                self.slots.push(Some(item));
                I::from_slot(self.slots.len() - 1)
            }
        }
    }

    /// Takes the item out; its slot is reused by a later insert.
    pub fn remove(&mut self, index: I) -> Option<T> {
        let item = self.slots.get_mut(index.slot())?.take();
        if item.is_some() {
            self.free.push(index.slot());
        }
        item
    }

    pub fn get(&self, index: I) -> Option<&T> {
        self.slots.get(index.slot())?.as_ref()
    }

    pub fn get_mut(&mut self, index: I) -> Option<&mut T> {
        self.slots.get_mut(index.slot())?.as_mut()
    }

    /// Every slot's index, empty ones included (a pass over the arena by index, which lets the
    /// caller borrow the arena's owner mutably for each).
    pub fn indices(&self) -> impl Iterator<Item = I> + use<I, T> {
        (0..self.slots.len()).map(I::from_slot)
    }

    /// The items with their indices.
    pub fn iter(&self) -> impl Iterator<Item = (I, &T)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(slot, item)| item.as_ref().map(|item| (I::from_slot(slot), item)))
    }
}

impl<I: ArenaIndex, T> std::ops::Index<I> for Arena<I, T> {
    type Output = Option<T>;
    fn index(&self, index: I) -> &Option<T> {
        &self.slots[index.slot()]
    }
}

impl<I: ArenaIndex, T> std::ops::IndexMut<I> for Arena<I, T> {
    fn index_mut(&mut self, index: I) -> &mut Option<T> {
        &mut self.slots[index.slot()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_reused_and_indices_stay_typed() {
        let mut a: Arena<TrackIdx, &str> = Arena::default();
        let x = a.insert("x");
        let y = a.insert("y");
        assert_eq!(a.remove(x), Some("x"));
        assert_eq!(a.remove(x), None, "removed once");
        let z = a.insert("z");
        assert_eq!(z, x, "the free slot is reused");
        assert_eq!(a.get(y), Some(&"y"));
        assert_eq!(a.iter().map(|(_, v)| *v).collect::<Vec<_>>(), ["z", "y"]);
        assert_eq!(a.indices().count(), 2);
    }
}

//! Pagination as the API contract defines it: 1-based pages, at most 100 items a page, and the
//! total so that clients can draw a pager.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    page: u32,
    per_page: u32,
}

impl PageRequest {
    pub const DEFAULT_PER_PAGE: u32 = 20;
    pub const MAX_PER_PAGE: u32 = 100;

    /// Out-of-range values are clamped rather than refused: a client asking for page 0 or 500
    /// items a page gets the nearest page the contract allows.
    pub fn new(page: Option<u32>, per_page: Option<u32>) -> Self {
        Self {
            page: page.unwrap_or(1).max(1),
            per_page: per_page
                .unwrap_or(Self::DEFAULT_PER_PAGE)
                .clamp(1, Self::MAX_PER_PAGE),
        }
    }

    pub const fn page(&self) -> u32 {
        self.page
    }

    pub const fn per_page(&self) -> u32 {
        self.per_page
    }

    pub fn offset(&self) -> u64 {
        u64::from(self.page - 1) * u64::from(self.per_page)
    }
}

impl Default for PageRequest {
    fn default() -> Self {
        Self::new(None, None)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub page: u32,
    pub per_page: u32,
    pub total: u64,
}

impl<T> Page<T> {
    pub fn new(request: PageRequest, items: Vec<T>, total: u64) -> Self {
        Self {
            items,
            page: request.page(),
            per_page: request.per_page(),
            total,
        }
    }

    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            page: self.page,
            per_page: self.per_page,
            total: self.total,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamps_to_the_contract() {
        let p = PageRequest::new(Some(0), Some(500));
        assert_eq!((p.page(), p.per_page()), (1, 100));
        let p = PageRequest::new(None, Some(0));
        assert_eq!((p.page(), p.per_page()), (1, 1));
        assert_eq!(PageRequest::default().per_page(), 20);
    }

    #[test]
    fn offset_counts_whole_pages() {
        assert_eq!(PageRequest::new(Some(3), Some(25)).offset(), 50);
        assert_eq!(
            PageRequest::new(Some(u32::MAX), Some(100)).offset(),
            429_496_729_400
        );
    }
}

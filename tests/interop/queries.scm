;;; queries.scm -- the query operations on a small graph of text items:
;;; valid-path?, query-path-hash, references, referrers, query-path-info,
;;; query-deriver, hash-part->path, query-all-valid-paths,
;;; query-valid-paths, query-failed-paths, clear-failed-paths,
;;; add-temp-root, add-indirect-root, ensure-path, sync-with-gc,
;;; built-in-builders, and how a session survives (or not) a bad request.
;;;
;;; Run against a daemon started with --no-substitutes.

(load (string-append (dirname (current-filename)) "/common.scm"))

(define s (connect))

;;; Fixtures: c refers to a and b, b refers to a.

(define a (expect-ok! "add-text-to-store a"
                      (lambda () (add-text-to-store s "a" "alpha\n" '()))))
(define b (expect-ok! "add-text-to-store b"
                      (lambda () (add-text-to-store s "b" "beta\n" (list a)))))
(define c (expect-ok! "add-text-to-store c"
                      (lambda () (add-text-to-store s "c" "gamma\n" (list b a)))))

(check! "text paths as the client computes them"
        (and (equal? a (text-store-path "a" "alpha\n" '()))
             (equal? b (text-store-path "b" "beta\n" (list a)))
             (equal? c (text-store-path "c" "gamma\n" (list a b))))
        a b c)

;;; valid-path?

(check! "valid-path? valid"
        (equal? (step! "valid-path? valid" (lambda () (valid-path? s c)))
                '(ok . #t)))
(check! "valid-path? invalid"
        (equal? (step! "valid-path? invalid" (lambda () (valid-path? s %missing)))
                '(ok . #f)))
(expect-error! "valid-path? not in store"
               (lambda () (valid-path? s "/etc/passwd"))
               "is not in the store")
(step-alive! "alive after valid-path? not in store" s #t)
(expect-error! "valid-path? store directory itself"
               (lambda () (valid-path? s (%store-prefix)))
               "is not in the store")
(step-alive! "alive after valid-path? store directory" s #t)
(let ((o (step! "valid-path? file inside an item"
                (lambda () (valid-path? s (string-append c "/x"))))))
  (check! "valid-path? file inside an item fails" (error? o) o))
(step-alive! "alive after valid-path? file inside an item" s #t)

;;; query-path-hash

(let ((h (expect-ok! "query-path-hash" (lambda () (query-path-hash s c))
                     #:encode hex)))
  (check! "query-path-hash is the NAR hash"
          (and h (bytevector=? h (sha256 (nar-bytes c))))))
(expect-error! "query-path-hash invalid"
               (lambda () (query-path-hash s %missing))
               "is not valid")
(step-alive! "alive after query-path-hash invalid" s #t)

;;; references and referrers

(check! "references c"
        (equal? (expect-ok! "references c" (lambda () (references s c))
                            #:encode paths->json)
                (sort (list a b) string<?)))
(check! "references a"
        (equal? (expect-ok! "references a" (lambda () (references s a))
                            #:encode paths->json)
                '()))
(expect-error! "references invalid" (lambda () (references s %missing))
               "is not valid")
(step-alive! "alive after references invalid" s #t)
(check! "referrers a"
        (equal? (expect-ok! "referrers a" (lambda () (referrers s a))
                            #:encode paths->json)
                (sort (list b c) string<?)))
(check! "referrers c"
        (equal? (expect-ok! "referrers c" (lambda () (referrers s c))
                            #:encode paths->json)
                '()))
(check! "referrers invalid"
        (equal? (expect-ok! "referrers invalid"
                            (lambda () (referrers s %missing))
                            #:encode paths->json)
                '()))

;;; query-path-info

(for-each (lambda (item name)
            (let ((info (expect-ok! (string-append "query-path-info " name)
                                    (lambda () (query-path-info s item))
                                    #:encode path-info->json)))
              (when info
                (check-path-info! (string-append "query-path-info " name)
                                  info item)
                (check! (string-append "query-path-info " name ": no deriver")
                        (not (path-info-deriver info))))))
          (list a b c) '("a" "b" "c"))
(expect-error! "query-path-info invalid"
               (lambda () (query-path-info s %missing))
               "is not valid")
(step-alive! "alive after query-path-info invalid" s #t)

;;; query-deriver (op 18; no client procedure)

(define (query-deriver store path)
  (raw-operation store 18
                 (lambda (p) (write-string path p))
                 read-string))

(check! "query-deriver of a text item"
        (equal? (expect-ok! "query-deriver a" (lambda () (query-deriver s a)))
                ""))
(expect-error! "query-deriver invalid" (lambda () (query-deriver s %missing))
               "is not valid")
(step-alive! "alive after query-deriver invalid" s #t)

;;; hash-part->path

(check! "hash-part->path known"
        (equal? (expect-ok! "hash-part->path known"
                            (lambda () (hash-part->path s (store-path-hash-part b))))
                b))
(check! "hash-part->path unknown"
        (equal? (expect-ok! "hash-part->path unknown"
                            (lambda () (hash-part->path s (make-string 32 #\1))))
                ""))
(expect-error! "hash-part->path wrong length"
               (lambda () (hash-part->path s "abc"))
               "invalid hash part")
(step-alive! "alive after hash-part->path wrong length" s #t)

;;; query-all-valid-paths (op 23) and query-valid-paths (op 31)

(define (query-all-valid-paths store)
  (raw-operation store 23 (const #t) read-store-path-list))

(define (query-valid-paths store paths)
  (raw-operation store 31
                 (lambda (p) (write-store-path-list paths p))
                 read-store-path-list))

(check! "query-all-valid-paths"
        (equal? (expect-ok! "query-all-valid-paths"
                            (lambda () (query-all-valid-paths s))
                            #:encode paths->json)
                (sort (list a b c) string<?)))
(check! "query-valid-paths"
        (equal? (expect-ok! "query-valid-paths"
                            (lambda () (query-valid-paths s (list c %missing a c)))
                            #:encode paths->json)
                (sort (list a c) string<?)))
(check! "query-valid-paths empty"
        (equal? (expect-ok! "query-valid-paths empty"
                            (lambda () (query-valid-paths s '()))
                            #:encode paths->json)
                '()))

;;; query-failed-paths and clear-failed-paths

(check! "query-failed-paths"
        (equal? (expect-ok! "query-failed-paths"
                            (lambda () (query-failed-paths s))
                            #:encode paths->json)
                '()))
(expect-ok! "clear-failed-paths some"
            (lambda () (clear-failed-paths s (list a %missing))))
(expect-ok! "clear-failed-paths *"
            (lambda ()
              (raw-operation s 25
                             (lambda (p) (write-string-list '("*") p))
                             read-int)))
(expect-ok! "clear-failed-paths none"
            (lambda () (clear-failed-paths s '())))

;;; add-temp-root, add-indirect-root, sync-with-gc (op 13)

(expect-ok! "add-temp-root valid" (lambda () (add-temp-root s a)))
(expect-ok! "add-temp-root invalid" (lambda () (add-temp-root s %missing)))

(define gcroots-auto
  (string-append (or (getenv "GUIX_STATE_DIRECTORY") (error "no state dir"))
                 "/gcroots/auto"))

(define (auto-roots)
  "The indirect roots: (NAME . TARGET) for each link in gcroots/auto."
  (if (file-exists? gcroots-auto)
      (map (lambda (e)
             `(("name" . ,e)
               ("target" . ,(readlink (string-append gcroots-auto "/" e)))))
           (scandir gcroots-auto (lambda (e) (not (member e '("." ".."))))
                    string<?))
      '()))

(define root-link (scratch-file "root-link"))
(symlink c root-link)
(expect-ok! "add-indirect-root" (lambda () (add-indirect-root s root-link)))
(let ((roots (auto-roots)))
  (record! "gcroots/auto after add-indirect-root" (list->vector roots))
  (check! "add-indirect-root made a link to the link"
          (equal? (map (cut assoc-ref <> "target") roots) (list root-link))
          roots))
(expect-ok! "add-indirect-root again" (lambda () (add-indirect-root s root-link)))
(record! "gcroots/auto after add-indirect-root again"
         (list->vector (auto-roots)))

(expect-ok! "sync-with-gc"
            (lambda () (raw-operation s 13 (const #t) read-int)))

;;; ensure-path

(check! "ensure-path valid"
        (equal? (step! "ensure-path valid" (lambda () (ensure-path s a)))
                '(ok . #t)))
(let ((o (step! "ensure-path invalid" (lambda () (ensure-path s %missing)))))
  (check! "ensure-path invalid fails" (error? o) o))
(step-alive! "alive after ensure-path invalid" s #t)

;;; built-in-builders, substitutes with --no-substitutes

(check! "built-in-builders"
        (equal? (expect-ok! "built-in-builders"
                            (lambda () (built-in-builders s))
                            #:encode list->vector)
                '("download" "git-download")))
(check! "substitute-urls with --no-substitutes"
        (equal? (expect-ok! "substitute-urls"
                            (lambda () (substitute-urls s))
                            #:encode list->vector)
                '()))
(check! "has-substitutes? with --no-substitutes"
        (equal? (step! "has-substitutes?" (lambda () (has-substitutes? s a)))
                '(ok . #f)))

;;; The directories and files a daemon keeps next to the store, as tests
;;; of Guix and tools such as `guix gc' expect them.

(define (layout-entry file)
  (let ((st (false-if-exception (lstat file))))
    (if st
        `(("type" . ,(symbol->string (stat:type st)))
          ("mode" . ,(number->string (logand (stat:perms st) #o7777) 8))
          ("uid" . ,(stat:uid st))
          ;; The database's own size depends on when SQLite checkpoints.
          ,@(if (and (eq? (stat:type st) 'regular)
                     (not (string-suffix? ".sqlite" file)))
                `(("size" . ,(stat:size st)))
                '()))
        'null)))

(let ((state (getenv "GUIX_STATE_DIRECTORY"))
      (db (getenv "GUIX_DATABASE_DIRECTORY")))
  (record! "layout"
           (map (lambda (entry)
                  (match entry
                    ((name . file) (cons name (layout-entry file)))))
                `(("store" . ,(%store-prefix))
                  ("store/.links" . ,(string-append (%store-prefix) "/.links"))
                  ("state/profiles" . ,(string-append state "/profiles"))
                  ("state/profiles/per-user"
                   . ,(string-append state "/profiles/per-user"))
                  ("state/profiles/per-user/root"
                   . ,(string-append state "/profiles/per-user/root"))
                  ("state/gcroots" . ,(string-append state "/gcroots"))
                  ("state/gcroots/auto" . ,(string-append state "/gcroots/auto"))
                  ("state/temproots" . ,(string-append state "/temproots"))
                  ("db" . ,db)
                  ("db/db.sqlite" . ,(string-append db "/db.sqlite"))
                  ("db/reserved" . ,(string-append db "/reserved"))
                  ("db/schema" . ,(string-append db "/schema")))))
  (record! "db/schema contents"
           (false-if-exception
            (call-with-input-file (string-append db "/schema") get-string-all))))

;;; add-temp-root with a path outside the store, on a connection of its own.

(let ((c (connect)))
  (step! "add-temp-root not in store" (lambda () (add-temp-root c "/etc/passwd")))
  (record! "alive after add-temp-root not in store" (alive? c)))

;;; Requests that end the session: a path that is not a store path where
;;; the daemon reads a store path, and an unknown operation.

(let ((o (step! "query-path-info not in store"
                (lambda () (query-path-info s "/etc/passwd")))))
  (check! "query-path-info not in store is an error"
          (error-contains? o "is not in the store") o))
(step-alive! "alive after query-path-info not in store" s #f)

(define s2 (connect))
(step-alive! "new session alive" s2 #t)
(let ((o (step! "operation 2"
                (lambda () (raw-operation s2 2 (const #t) read-int)))))
  (check! "operation 2 is invalid" (error-contains? o "invalid operation") o))
(step-alive! "alive after operation 2" s2 #f)

(define s3 (connect))
(let ((o (step! "references not in store"
                (lambda () (references s3 "/etc/passwd")))))
  (check! "references not in store is an error"
          (error-contains? o "is not in the store") o))
(step-alive! "alive after references not in store" s3 #f)

(finish!)

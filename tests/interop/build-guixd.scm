;;; build-guixd.scm -- what only guixd does (run against guixd alone,
;;; without a chroot, started with `--max-build-attempts=2 --max-jobs=2'):
;;; - a flaky build that fails while another build runs beside it is run
;;;   again, alone, and passes; its stored log shows both attempts;
;;; - a fixed-output derivation whose builder would fail is satisfied from
;;;   the store when an item with its content is there under another name
;;;   (recursive: any item with that NAR hash; flat: the output of an
;;;   earlier fixed-output build).
;;;
;;; The flaky builder remembers its first attempt in the shared directory
;;; `$GUIXD_IT_DIR/work/shared' (mode 1777), which builders can write to
;;; only without a chroot.

(load (string-append (dirname (current-filename)) "/build-common.scm"))

(define s (connect))
(set-build-options s #:use-substitutes? #f #:verbosity 1)
(define bb (add-busybox! s))
(define shared (string-append (it-dir) "/work/shared"))

;;; Retry under load.

(define flaky
  (sh-derivation s bb "flaky"
                 (string-append
                  "if [ -e " shared "/flaky-ran ]; then"
                  " echo second attempt; echo ok > $out;"
                  " else touch " shared "/flaky-ran; echo first attempt; exit 1; fi")))
(define beside
  (sh-derivation s bb "beside" "sleep 2; echo > $out"))
(set-build-options s #:use-substitutes? #f #:verbosity 1 #:max-build-jobs 2)
(expect-built! "flaky, with another build beside it" s (list flaky beside)
               #:record-log? #f)
(check-log! "flaky: first attempt" "first attempt")
(check-log! "flaky: second attempt" "second attempt")
(check-log! "flaky: the retry is announced"
            (string-append "retrying build of `" (drv-file flaky)
                           "' (attempt 2 of 2) alone"))
(let ((text (stored-log s (drv-file flaky))))
  (check! "flaky: the stored log shows both attempts"
          (and text (string-contains text "first attempt")
               (string-contains text "second attempt")
               (string-contains text "retrying build of"))
          text))
(record-outputs! "flaky" s flaky)
(set-build-options s #:use-substitutes? #f #:verbosity 1)

;; A build that fails alone is not retried.
(define always-fails
  (sh-derivation s bb "always-fails" "echo failing; exit 1"))
(expect-build-error! "failure alone, no retry" s (list always-fails) "failed" 100)
(check! "failure alone: one attempt"
        (= 1 (count-traces %last-log "@ build-started")))

;;; Reuse of fixed-output content.

(define tree
  `(directory ("a" (regular ,(string->utf8 "reused\n")))))
(define tree-file (make-tree "tree" tree))
(define tree-item (add-to-store s "some-other-name" #t "sha256" tree-file))
(define tree-hash (sha256 (nar-bytes tree-file)))
(define recursive
  (sh-derivation s bb "would-fail-recursive" "echo builder ran; exit 1"
                 #:hash tree-hash #:hash-algo 'sha256 #:recursive? #t))
(expect-built! "reuse, recursive" s (list recursive))
(check-log! "reuse, recursive: said so"
            (string-append "reusing `" tree-item "'"))
(check! "reuse, recursive: the builder did not run"
        (not (string-contains %last-log "builder ran")))
(record-outputs! "reuse, recursive" s recursive)
(check! "reuse, recursive: contents"
        (equal? (file-text (output-file recursive "a")) "reused\n"))

(define flat-text "flat content\n")
(define flat-first
  (sh-derivation s bb "flat-first" "printf 'flat content\\n' > $out"
                 #:hash (sha256 (string->utf8 flat-text)) #:hash-algo 'sha256))
(expect-built! "flat, built" s (list flat-first))
(define flat-second
  (sh-derivation s bb "flat-second" "echo builder ran; exit 1"
                 #:hash (sha256 (string->utf8 flat-text)) #:hash-algo 'sha256))
(expect-built! "reuse, flat" s (list flat-second))
(check-log! "reuse, flat: said so"
            (string-append "reusing `" (derivation->output-path flat-first) "'"))
(check! "reuse, flat: contents"
        (equal? (file-text (derivation->output-path flat-second)) flat-text))
(record-outputs! "reuse, flat" s flat-second)

;; Nothing to reuse: the builder runs and fails.
(define nothing
  (sh-derivation s bb "nothing-to-reuse" "echo builder ran; exit 1"
                 #:hash (sha256 (string->utf8 "absent\n")) #:hash-algo 'sha256))
(expect-build-error! "nothing to reuse" s (list nothing) "failed" 1)
(check-log! "nothing to reuse: the builder ran" "builder ran")

(step-alive! "alive at the end" s #t)
(finish!)
